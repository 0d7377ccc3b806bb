#!/usr/bin/env python3
"""Turns a CUDA source of the backend into C++ for the CPU emulation
(tests/emu/README.md): every launch

    kernel<<<grid, block[, shared_bytes[, stream]]>>>(args);

becomes a call of the emulator's launcher,

    ::unet_emu::launch(::unet_emu::config("kernel", __FILE__, __LINE__, grid, block[, ...]),
                       [](auto... p) { kernel(p...); }, args);

which evaluates the arguments once and runs the kernel for every thread of
the grid. Nothing else changes: the file starts with the emulator's
cuda_runtime.h (nvcc includes the real one implicitly) and a #line, so that
messages and __FILE__ name the .cu file and its lines.

    cu2cc.py SOURCE.cu OUTPUT.cc
"""
import re
import sys


def skip_literal_or_comment(text, i):
    """If a comment or a string/char literal starts at i, the index after it; else None."""
    if text.startswith("//", i):
        j = text.find("\n", i)
        return len(text) if j < 0 else j
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        if j < 0:
            raise SyntaxError("unterminated comment")
        return j + 2
    if text[i] in "\"'":
        q, j = text[i], i + 1
        while j < len(text) and text[j] != q:
            j += 2 if text[j] == "\\" else 1
        return j + 1
    return None


def matching(text, i, open_ch, close_ch):
    """The index of the bracket closing the one at i."""
    depth, j = 0, i
    while j < len(text):
        k = skip_literal_or_comment(text, j)
        if k is not None:
            j = k
            continue
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise SyntaxError(f"no {close_ch!r} closes the {open_ch!r} at offset {i}")


def callee_start(text, i):
    """Where the kernel name (with its template arguments) before `<<<` at i begins."""
    j = i
    while j > 0 and text[j - 1].isspace():
        j -= 1
    if text[j - 1] == ">":  # kernel<T><<<...: walk back over the template arguments
        depth = 0
        while j > 0:
            j -= 1
            depth += {">": 1, "<": -1}.get(text[j], 0)
            if depth == 0:
                break
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] in "_:"):
        j -= 1
    return j


def config_end(text, i):
    """The index of the `>>>` closing the launch configuration that starts at i."""
    depth, j = 0, i
    while j < len(text):
        k = skip_literal_or_comment(text, j)
        if k is not None:
            j = k
            continue
        c = text[j]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(">>>", j):
            return j
        j += 1
    raise SyntaxError(f"no '>>>' closes the launch at offset {i}")


def rewrite(text):
    out, pos, j = [], 0, 0
    while j < len(text):
        k = skip_literal_or_comment(text, j)
        if k is not None:
            j = k
            continue
        if not text.startswith("<<<", j):
            j += 1
            continue
        start = callee_start(text, j)
        kernel = text[start:j].strip()
        if not kernel:
            raise SyntaxError(f"a launch without a kernel name at offset {j}")
        end_cfg = config_end(text, j + 3)
        config = text[j + 3:end_cfg]
        open_paren = end_cfg + 3
        while text[open_paren].isspace():
            open_paren += 1
        if text[open_paren] != "(":
            raise SyntaxError(f"the launch of {kernel} has no argument list")
        close_paren = matching(text, open_paren, "(", ")")
        # NULL is an integer in C++: as a deduced argument it would not convert to the kernel's pointer
        args = re.sub(r"\bNULL\b", "nullptr", text[open_paren + 1:close_paren])
        out.append(text[pos:start])
        out.append(f'::unet_emu::launch(::unet_emu::config("{kernel}", __FILE__, __LINE__, {config}), '
                   f'[](auto... unet_emu_p) {{ {kernel}(unet_emu_p...); }}{text[end_cfg + 3:open_paren]}'
                   f'{", " if args.strip() else ""}{args})')
        pos = j = close_paren + 1
    out.append(text[pos:])
    return "".join(out)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    body = rewrite(text)
    with open(dst + ".tmp", "w") as f:
        f.write(f"/* generated from {src} by tests/emu/cu2cc.py: do not edit */\n")
        f.write("#define __CUDACC__ 1\n#include <cuda_runtime.h>\n")
        f.write(f'#line 1 "{src}"\n')
        f.write(body)
    import os
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
