"""Zeroes the GPU code for other architectures in a CUDA library, so it compresses to a fraction.

    python trim_fatbin.py SRC DST SM     (SM: 90 for the H100 and H200)

onnxruntime-gpu's libonnxruntime_providers_cuda.so (284 MB) holds each kernel for sm_75, 80, 86,
89, 90 and 120; the driver loads the cubin of the device's architecture only. Every fatbin entry
keeps its header, and the payloads of the other architectures become zeros: the library loads as
before on an SM GPU, and its xz-compressed size drops from about 188 MB to 53 MB (pack.sh needs
that to carry it in the device tool's 64 MiB calls). On any other GPU the result fails to load
its kernels: use the untrimmed library there.
"""
import struct
import subprocess
import sys

MAGIC = 0xBA55ED50


def main() -> None:
    src, dst, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = bytearray(open(src, "rb").read())
    sections = subprocess.run(["readelf", "-S", "-W", src], capture_output=True, text=True, check=True)
    line = next(l for l in sections.stdout.splitlines() if ".nv_fatbin" in l)
    fields = line.split("]")[1].split()
    pos, end = int(fields[3], 16), int(fields[3], 16) + int(fields[4], 16)
    zeroed = kept = 0
    while pos < end:
        magic, _version, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:  # padding between fatbins
            pos += 8
            continue
        entry, last = pos + header, pos + header + size
        while entry < last:
            _kind, _v, entry_header, payload = struct.unpack_from("<HHII", data, entry)
            if entry_header == 0:
                break
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            start = entry + entry_header
            if sm == keep:
                kept += payload
            else:
                data[start : start + payload] = bytes(payload)
                zeroed += payload
            entry = start + payload
        pos = last
    if kept == 0:
        raise SystemExit(f"{src}: no sm_{keep} code found; nothing written")
    open(dst, "wb").write(data)
    print(f"{dst}: sm_{keep} code kept ({kept >> 20} MiB), other architectures zeroed ({zeroed >> 20} MiB)")


if __name__ == "__main__":
    main()
