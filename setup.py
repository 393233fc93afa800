"""Builds tensorflow-qdq's op library against the installed TensorFlow.

One shared library, ``tensorflow_qdq/_qdq_ops.so``, holds the CPU kernels and,
when ``nvcc`` is found (``QDQ_CUDA=auto|0|1``), the CUDA kernels with a static
cudart. It must match the TensorFlow that loads it, so build without isolation:

    pip install --no-build-isolation .

Environment: QDQ_CUDA (auto), QDQ_CUDA_ARCHS (80;90), QDQ_JOBS (CPU count),
CXX (g++), NVCC (nvcc on PATH or /usr/local/cuda/bin/nvcc).
"""

import concurrent.futures
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _build_lists():
    """sources.bzl: the source lists and exactness flags BUILD loads too (plain assignments)."""
    names = {}
    exec(compile((ROOT / "sources.bzl").read_text(), "sources.bzl", "exec"), {}, names)  # noqa: S102
    return names


_LISTS = _build_lists()
CORE_SOURCES, AVX2_SOURCES, AVX2_FLAGS, CORE_FLAGS = (_LISTS[k] for k in ("CORE_SOURCES", "AVX2_SOURCES", "AVX2_FLAGS",
                                                                         "CORE_FLAGS"))
TF_SOURCES, TF_GPU_SOURCES, CUDA_SOURCES = _LISTS["TF_SOURCES"], _LISTS["TF_GPU_SOURCES"], _LISTS["CUDA_SOURCES"]
NVCC_FLAGS, BINDING_SOURCES = _LISTS["NVCC_FLAGS"], _LISTS["BINDING_SOURCES"]
WARNINGS = ["-Wall", "-Wextra", "-Werror=return-type"]
CXX_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden", "-DNDEBUG"] + WARNINGS


def sanitizer_flags():
    """QDQ_SANITIZE=address,undefined (or any -fsanitize= list): instrumented debug build, flags
    for both compiling and linking. Load it with the ASan runtime preloaded (scripts/sanitize.sh)."""
    wanted = os.environ.get("QDQ_SANITIZE", "").strip()
    if not wanted:
        return []
    # Every report aborts, so a test or fuzz worker cannot pass over one. UBSan's vptr check needs
    # TensorFlow's RTTI, and its null/nonnull checks make GCC 12 reject absl's constexpr
    # function-pointer comparisons; ASan still catches any null dereference.
    flags = [f"-fsanitize={wanted}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in wanted.split(","):
        flags.append("-fno-sanitize=vptr,null,nonnull-attribute,returns-nonnull-attribute")
    return flags


def log(msg):
    print(f"[tensorflow-qdq build] {msg}", flush=True)


def find_nvcc():
    explicit = os.environ.get("NVCC")
    if explicit:
        return explicit
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def cuda_setting(nvcc):
    mode = os.environ.get("QDQ_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"QDQ_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    if nvcc is None:
        if mode == "1":
            raise SystemExit("QDQ_CUDA=1 but nvcc was not found (set NVCC=/path/to/nvcc)")
        return False
    return bool(CUDA_SOURCES) or mode == "1"


def tensorflow_flags():
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - exercised by users without TF
        raise SystemExit(
            "tensorflow-qdq builds against the installed TensorFlow, which could not be imported "
            f"({exc}).\nInstall TensorFlow first, then build without isolation:\n"
            "    pip install tensorflow-cpu && pip install --no-build-isolation ."
        ) from exc
    compile_flags = []
    for flag in tf.sysconfig.get_compile_flags():
        if flag.startswith("-I"):
            compile_flags += ["-isystem", flag[2:]]  # silences TF's own header warnings
        elif not flag.startswith("--std=") and not flag.startswith("-std="):
            compile_flags.append(flag)
    return tf.__version__, compile_flags, list(tf.sysconfig.get_link_flags())


def core_cpu_flags(source):
    """Per-file flags of the CPU core: IEEE arithmetic exactly as written (no FMA
    contraction), and AVX2+F16C for the one unit the core dispatches to at run time
    (never -march=native: the library must run on any x86-64)."""
    flags = list(CORE_FLAGS)
    if source in AVX2_SOURCES and platform.machine().lower() in ("x86_64", "amd64"):
        flags += AVX2_FLAGS
    return flags


def cuda_home(nvcc):
    """The toolkit root holding include/cuda_runtime.h: $CUDA_HOME, next to nvcc, or /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda"]
    for root in filter(None, candidates):
        if (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root)
    raise SystemExit(f"found nvcc ({nvcc}) but no CUDA headers; set CUDA_HOME to the toolkit root")


def cuda_arch_flags():
    """-gencode flags for QDQ_CUDA_ARCHS (default 80;90): SASS for each, PTX for the newest (JIT for later GPUs)."""
    archs = sorted({int(a) for a in os.environ.get("QDQ_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a})
    if not archs:
        raise SystemExit("QDQ_CUDA_ARCHS must list compute capabilities, e.g. 80;90")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return flags + [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


def nvcc_command(nvcc):
    # NVCC_FLAGS (--fmad=false, see sources.bzl): no contraction can make the device
    # round differently from the CPU.
    return [nvcc, "-std=c++17", "-O3", "-DNDEBUG", "-x", "cu", *NVCC_FLAGS,
            "-Xcompiler", ",".join(["-fPIC", "-fvisibility=hidden"] + WARNINGS),
            "-I", str(ROOT)] + cuda_arch_flags()


def cuda_jobs(nvcc, tf_base):
    """Compile jobs for the CUDA kernels (TF-free, nvcc) and the GPU registrations (g++)."""
    glue = tf_base + ["-DGOOGLE_CUDA=1", "-isystem", str(cuda_home(nvcc) / "include")]
    return [(s, nvcc_command(nvcc)) for s in CUDA_SOURCES] + [(s, glue) for s in TF_GPU_SOURCES]


def cuda_link_flags(nvcc):
    """cudart linked statically: the library needs no CUDA runtime on the loader path
    and still loads where there is no driver (CPU-only TensorFlow)."""
    home = cuda_home(nvcc)
    for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (home / lib / "libcudart_static.a").exists():
            return ["-L" + str(home / lib), "-l:libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
    raise SystemExit(f"libcudart_static.a not found under {home}; set CUDA_HOME to the toolkit root")


def host_base(cxx):
    """The g++ command every host unit starts from (sanitizer flags included when asked)."""
    return [cxx] + CXX_FLAGS + sanitizer_flags() + ["-I", str(ROOT)]


def core_jobs(base):
    """Compile jobs of the framework-free CPU core, each with its per-file flags; shared by
    the op library and tensorflow_qdq._core so the two cannot build the core differently."""
    return [(s, base + core_cpu_flags(s)) for s in CORE_SOURCES]


def link_shared(cxx, target, objects, extra):
    target.parent.mkdir(parents=True, exist_ok=True)
    link = [cxx, "-shared", "-o", str(target)] + [str(o) for o in objects] + extra + sanitizer_flags()
    subprocess.run(link, cwd=ROOT, check=True)


def core_only():
    return os.environ.get("QDQ_CORE_ONLY", "0") == "1"


def build_core_module(cmd, ext):
    """tensorflow_qdq._core: pybind11 over cc/ (CPU loops, and the CUDA launchers when
    nvcc is found). Needs no TensorFlow, so a GPU machine without it can build it
    alone with QDQ_CORE_ONLY=1."""
    try:
        import pybind11
    except ImportError:
        if core_only():
            raise SystemExit("QDQ_CORE_ONLY=1 needs pybind11: pip install pybind11") from None
        log("pybind11 not found: skipping tensorflow_qdq._core")
        return
    nvcc = find_nvcc()
    with_cuda = cuda_setting(nvcc)
    cxx = os.environ.get("CXX", "g++")
    build = Compiler(Path(cmd.build_temp) / "qdq")
    base = host_base(cxx)
    py_includes = ["-isystem", pybind11.get_include(), "-isystem", sysconfig.get_paths()["include"]]
    binding = base + py_includes + (["-DQDQ_WITH_CUDA"] if with_cuda else [])
    jobs = core_jobs(base) + [(s, binding) for s in BINDING_SOURCES]
    if with_cuda:
        jobs += [(s, nvcc_command(nvcc)) for s in CUDA_SOURCES]
    objects = build.compile(jobs)
    target = Path(cmd.get_ext_fullpath(ext.name))
    log(f"linking {target} (CUDA: {'yes' if with_cuda else 'no'})")
    link_shared(cxx, target, objects, cuda_link_flags(nvcc) if with_cuda else [])


class Compiler:
    """Compiles sources in parallel into build/, skipping up-to-date objects."""

    def __init__(self, build_dir):
        self.build_dir = Path(build_dir)
        self.build_dir.mkdir(parents=True, exist_ok=True)

    def _object(self, source, command):
        digest = hashlib.sha1(" ".join(command).encode()).hexdigest()[:10]
        return self.build_dir / f"{Path(source).name}.{digest}.o"

    def _up_to_date(self, obj):
        dep = obj.with_suffix(".d")
        if not obj.exists() or not dep.exists():
            return False
        text = dep.read_text().replace("\\\n", " ")
        inputs = text.split(":", 1)[1].split() if ":" in text else []
        mtime = obj.stat().st_mtime
        return all(Path(p).exists() and Path(p).stat().st_mtime <= mtime for p in inputs)

    def compile(self, jobs):
        """jobs: list of (source, base_command); returns object paths in order."""
        work, objects = [], []
        for source, base in jobs:
            obj = self._object(source, base)
            objects.append(obj)
            if not self._up_to_date(obj):
                work.append(base + ["-MMD", "-MF", str(obj.with_suffix(".d")), "-c", source, "-o", str(obj)])
        workers = int(os.environ.get("QDQ_JOBS", os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for cmd, result in zip(work, pool.map(self._run, work)):
                if result.returncode != 0:
                    sys.stderr.write(result.stdout + result.stderr)
                    raise SystemExit(f"compilation failed: {shlex.join(cmd)}")
                if result.stderr.strip():
                    sys.stderr.write(result.stderr)
        return objects

    @staticmethod
    def _run(cmd):
        log("compiling " + cmd[cmd.index("-c") + 1])
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


class BuildQdq(build_ext):
    """Builds the op library with g++ (and nvcc) instead of distutils' compiler."""

    def get_ext_filename(self, fullname):
        # A TensorFlow op library, not a Python module: no ABI tag in its name.
        *package, name = fullname.split(".")
        if name == "_qdq_ops":
            return os.path.join(*package, "_qdq_ops.so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name == "tensorflow_qdq._core":
            return build_core_module(self, ext)
        if ext.name != "tensorflow_qdq._qdq_ops":
            return super().build_extension(ext)
        if core_only():
            log("QDQ_CORE_ONLY=1: skipping the TensorFlow op library")
            return None
        tf_version, tf_cflags, tf_ldflags = tensorflow_flags()
        nvcc = find_nvcc()
        with_cuda = cuda_setting(nvcc)
        cxx = os.environ.get("CXX", "g++")
        log(f"TensorFlow {tf_version}; CUDA kernels: {'yes (' + nvcc + ')' if with_cuda else 'no'}")
        build = Compiler(Path(self.build_temp) / "qdq")
        base = host_base(cxx)
        jobs = core_jobs(base) + [(s, base + tf_cflags) for s in TF_SOURCES]
        link_extra = []
        if with_cuda:
            jobs += cuda_jobs(nvcc, base + tf_cflags)
            link_extra = cuda_link_flags(nvcc)
        objects = build.compile(jobs)
        target = Path(self.get_ext_fullpath(ext.name))
        log("linking " + str(target))
        link_shared(cxx, target, objects, tf_ldflags + link_extra)
        self._write_build_info(target.parent, tf_version, with_cuda)

    def _write_build_info(self, package_dir, tf_version, with_cuda):
        text = (
            '"""Written by setup.py: what the op library next to this file was built against."""\n'
            f"TF_VERSION = {tf_version!r}\nWITH_CUDA = {with_cuda!r}\n"
            f"PYTHON = {sysconfig.get_python_version()!r}\n"
        )
        for directory in {Path(package_dir), ROOT / "tensorflow_qdq"}:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "_build_info.py").write_text(text)


if __name__ == "__main__":  # pip and `python setup.py` run it so; tests import the functions
    setup(
        ext_modules=[Extension("tensorflow_qdq._qdq_ops", sources=[]), Extension("tensorflow_qdq._core", sources=[])],
        cmdclass={"build_ext": BuildQdq},
    )
