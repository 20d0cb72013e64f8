#!/usr/bin/env python3
"""make-seeds.py OUTDIR PTHDIR: the seed corpora of the fuzz targets.

For each torch.save checkpoint PTHDIR/*.pth (a zip archive holding <archive>/data.pkl
and the storage records) it writes
  OUTDIR/pickle/<stem>.pkl    its data.pkl, for fuzz-pickle;
  OUTDIR/records/<stem>.eadz  its records in the form fuzz-torch-checkpoint zips itself
                              ("EADZ\\n", then "name\\ncontents" separated by "\\0EADZ\\0").
Files that are not such archives (the legacy format, a truncated zip) are skipped; the
checkpoints themselves are fuzz-torch-checkpoint's other seeds.  meson runs it on
tests/fixtures/pth.
"""
import glob
import os
import shutil
import sys
import zipfile
import zlib

RECORDS_MAGIC = b"EADZ\n"
RECORDS_SEPARATOR = b"\0EADZ\0"


def main():
    outdir, pthdir = sys.argv[1:3]
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(os.path.join(outdir, "pickle"))
    os.makedirs(os.path.join(outdir, "records"))
    for path in sorted(glob.glob(os.path.join(pthdir, "*.pth"))):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            with zipfile.ZipFile(path) as archive:
                records = [(name, archive.read(name)) for name in archive.namelist()]
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
            continue
        pickles = [data for name, data in records if name.endswith("/data.pkl")]
        if pickles:
            with open(os.path.join(outdir, "pickle", stem + ".pkl"), "wb") as out:
                out.write(pickles[0])
        with open(os.path.join(outdir, "records", stem + ".eadz"), "wb") as out:
            out.write(RECORDS_MAGIC + RECORDS_SEPARATOR.join(
                name.encode() + b"\n" + data for name, data in records))


if __name__ == "__main__":
    main()
