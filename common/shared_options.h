/* shared_options.h — the options that several commands have, defined once.
 *
 * An option that two commands share means the same in both: one name, one
 * type, one help text and one range. Each GRAFT_OPT_<NAME>(off) below is
 * that option's table entry at offset off of a command's settings struct;
 * the few whose default is the command's own choice (how many steps, which
 * learning rate, which seed) take it as a second argument. Command tables
 * (runconfig.c, pretrain.c and the commands in cli/) use these entries instead of writing
 * their own, and tests/test_options.c checks every pair of tables for an
 * option name they both have but describe differently.
 */
#ifndef GRAFT_SHARED_OPTIONS_H
#define GRAFT_SHARED_OPTIONS_H

#include "options.h"

/* ---- machine and logging ------------------------------------------------ */

#define GRAFT_OPT_THREADS(off)                                                            \
    {"threads", GRAFT_OPT_INT, (off), "0", 0, 1024, "OpenBLAS/OpenMP threads (0: all cores)"}

#define GRAFT_OPT_PRECISION(off)                                                          \
    {"precision", GRAFT_OPT_STRING, (off), "fp32", 0, -1,                                  \
     "the trunk's products (projections, LM head, attention): fp32 (sgemm) or bf16 (bf16 " \
     "operands, fp32 sums; needs AVX512_BF16; about 1.5x faster training steps); weights, " \
     "checkpoints and optimizer state stay fp32"}

#define GRAFT_OPT_LOG_LEVEL(off)                                                          \
    {"log_level", GRAFT_OPT_STRING, (off), "", 0, -1,                                      \
     "lines written to stderr: error, warn, info or debug (empty: the GRAFT_LOG_LEVEL "    \
     "environment variable, else info)"}

#define GRAFT_OPT_SEED(off, def)                                                          \
    {"seed", GRAFT_OPT_INT, (off), (def), 0, 2147483647,                                   \
     "seed of every random choice (initial weights or modules, batches, shards)"}

/* ---- model and data ----------------------------------------------------- */

#define GRAFT_OPT_PRESET(off)                                                             \
    {"preset", GRAFT_OPT_STRING, (off), "small", 0, -1,                                    \
     "model preset: tiny, small or base (not used with a --trunk checkpoint)"}

#define GRAFT_OPT_TRUNK(off)                                                              \
    {"trunk", GRAFT_OPT_STRING, (off), "", 0, -1,                                          \
     "pretrained trunk checkpoint (safetensors: graft's, or a Hugging Face GPT-2 "          \
     "model.safetensors with config.json, vocab.json and merges.txt beside it); empty: "    \
     "random init from --preset"}

#define GRAFT_OPT_VOCAB(off)                                                              \
    {"vocab", GRAFT_OPT_STRING, (off), "", 0, -1,                                          \
     "GPT-2's BPE from this folder (vocab.json, merges.txt) instead of the byte tokenizer " \
     "(pretrain: the preset's vocabulary becomes its 50257 tokens and the checkpoint gets " \
     "the files beside it; tokenize: instead of --trunk's tokenizer)"}

#define GRAFT_OPT_TASKS(off)                                                              \
    {"tasks", GRAFT_OPT_STRING, (off), "", 0, -1,                                          \
     "comma list of NAME:KIND:PATH task files (KIND classification or generation)"}

#define GRAFT_OPT_SEQ(off)                                                                \
    {"seq", GRAFT_OPT_INT, (off), "0", 0, 65536,                                           \
     "tokens per sequence, at most the trunk's context (0: the context)"}

#define GRAFT_OPT_BATCH(off)                                                              \
    {"batch", GRAFT_OPT_INT, (off), "16", 1, 4096, "sequences (examples) per step"}

/* ---- method ------------------------------------------------------------- */

#define GRAFT_OPT_METHOD(off, def)                                                        \
    {"method", GRAFT_OPT_STRING, (off), (def), 0, -1,                                      \
     "trained modules: full, head, lora, adapter, red, lntune, channels (comma-combined); " \
     "or graft: sparse masks from --finetuned full fine-tuning runs"}

#define GRAFT_OPT_LORA_TARGETS(off)                                                       \
    {"lora_targets", GRAFT_OPT_STRING, (off), "all", 0, -1,                                \
     "projections with LoRA: qkv, attn, fc, fcproj or all"}

#define GRAFT_OPT_LORA_SHARED_RANK(off)                                                   \
    {"lora_shared_rank", GRAFT_OPT_INT, (off), "8", 0, 1024,                               \
     "rank of the shared (task-agnostic) LoRA pair; 0: none"}

#define GRAFT_OPT_LORA_SHARED_ALPHA(off)                                                  \
    {"lora_shared_alpha", GRAFT_OPT_FLOAT, (off), "16", 0, 1e6, "shared LoRA alpha"}

#define GRAFT_OPT_ADAPTER_DIM(off)                                                        \
    {"adapter_dim", GRAFT_OPT_INT, (off), "16", 1, 65536, "adapter bottleneck width"}

/* ---- optimisation ------------------------------------------------------- */

#define GRAFT_OPT_STEPS(off, def)                                                         \
    {"steps", GRAFT_OPT_INT, (off), (def), 1, 1e9,                                         \
     "optimiser steps (graft bench: the timed ones; federated runs: --rounds instead)"}

#define GRAFT_OPT_LR(off, def)                                                            \
    {"lr", GRAFT_OPT_FLOAT, (off), (def), 0, 10, "peak learning rate"}

#define GRAFT_OPT_WARMUP(off, def)                                                        \
    {"warmup", GRAFT_OPT_INT, (off), (def), 0, 1e9,                                        \
     "steps of linear learning-rate warmup"}

#define GRAFT_OPT_WEIGHT_DECAY(off, def)                                                  \
    {"weight_decay", GRAFT_OPT_FLOAT, (off), (def), 0, 10,                                 \
     "decoupled decay on matrices (AdamW; SGD adds it to the gradient)"}

#define GRAFT_OPT_GRAD_CLIP(off)                                                          \
    {"grad_clip", GRAFT_OPT_FLOAT, (off), "1.0", 0, 1e9, "global gradient-norm clip (0: off)"}

/* ---- evaluation, checkpoints, progress ---------------------------------- */

#define GRAFT_OPT_EVAL_EVERY(off, def)                                                    \
    {"eval_every", GRAFT_OPT_INT, (off), (def), 1, 1e9, "evaluate every N steps"}

#define GRAFT_OPT_CHECKPOINT_EVERY(off, def)                                              \
    {"checkpoint_every", GRAFT_OPT_INT, (off), (def), 1, 1e9, "checkpoint every N steps"}

#define GRAFT_OPT_LOG_EVERY(off, def)                                                     \
    {"log_every", GRAFT_OPT_INT, (off), (def), 1, 1e9, "progress line every N steps"}

#define GRAFT_OPT_RESUME(off)                                                             \
    {"resume", GRAFT_OPT_STRING, (off), "", 0, -1,                                         \
     "resume from this checkpoint, written by an earlier run with the same settings "      \
     "(pretrain: the trunk; otherwise modules.safetensors)"}

/* ---- federated ---------------------------------------------------------- */

#define GRAFT_OPT_WORKERS(off, def)                                                       \
    {"workers", GRAFT_OPT_INT, (off), (def), 0, 1023,                                      \
     "workers K: graft coordinator waits for K before the first round; graft run starts "  \
     "K worker processes (0: the number of client folders of --shards, else 2)"}

#define GRAFT_OPT_SHARDS(off)                                                             \
    {"shards", GRAFT_OPT_STRING, (off), "", 0, -1,                                         \
     "a shard directory (graft data shard): worker i holds its client folder client-i "    \
     "(graft mpi: rank r is worker r-1)"}

#endif
