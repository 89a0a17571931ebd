/* lsan_keep_dso.c — compiled into graft and every test program only when
 * GRAFT_SANITIZE is ON (CMakeLists.txt), never into a normal build.
 *
 * Open MPI 4.1 (libopen-pal), PMIx (libpmix) and hwloc dlopen their plugins
 * (mca_*.so, pmix_mca_*.so) and dlclose them in MPI_Finalize, before
 * LeakSanitizer runs at exit. A leak allocated inside an unloaded plugin is
 * then reported with `<unknown module>` frames, which no suppression can
 * match (nor a person read). Open MPI 4.1 has no parameter to keep its
 * components loaded (`ompi_info --all | grep dlclose` finds none; 5.x's
 * mca_base_component_disable_dlclose came later), so this definition
 * interposes dlclose for the whole process: the executable comes first in
 * the dynamic linker's lookup scope, and CMake exports the symbol with
 * -Wl,--export-dynamic-symbol=dlclose. Nothing is unloaded, every plugin
 * frame symbolizes, and tests/lsan.supp names the libraries by module.
 * Keeping a library mapped until exit changes no behaviour graft relies on.
 */
int dlclose(void *handle);

int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
