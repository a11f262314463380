"""Scaling benchmark: memory and update cost of CMANP vs two re-encoding peers.

The peers (``cmanp_bo.architectures.build_network``, all three with the same ``CMANPConfig``):
a full-attention TNP-D (``surrogates.tnp``; O(n^2) time and memory per encode) and a latent
bottleneck LBANP (``surrogates.lbanp``; its latents cross-attend to all n context tokens in every
layer, O(n) time and memory per encode). Neither has an incremental form, so their update
re-encodes all n + 1 points.

For n = 1e2 .. 1e6 context points (batch 1, d_x = d_y = 1, float32, one thread):

* peak memory BEYOND the inputs while encoding the context (CMANP: blocks of 1024 points) and
  while absorbing one more point (CMANP: ``net.update``; TNP-D and LBANP: re-encoding all n + 1
  points); for CMANP also, as a diagnostic, a stream that encodes one point and absorbs the rest
  through ``net.update`` in blocks of 1024;
* the median time of a single-point update over many repeats.

Targets (issue 2): CMANP memory flat in n (within 10 % from 1e3 to 1e6), CMANP update time flat
(median at 1e5 within 1.2x of 1e2). A re-encoding peer runs only where its memory estimate fits
the cap (TNP-D: one layer's attention scores, n^2 * heads * 4 bytes; LBANP: one layer's
latent-context scores and a few token-sized tensors, n * (latents * heads + 4 * d_model) * 4
bytes); larger n are recorded as skipped, with the estimate and an extrapolation.

Memory method (Linux): every (model, n, phase, repeat) runs in a fresh subprocess that builds the
network, warms it up on small inputs of the same block shapes, creates the inputs (and, for the
update phase, the state), releases free heap pages (``malloc_trim``), reads the resident set size,
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), runs the phase and
reads the new peak (``VmHWM``). Peak minus baseline is the memory the phase needed beyond
everything that existed before it (inputs, weights, state). The kernel tracks the peak on every
page fault, so transient allocations are caught; calibration probes (a transient 1 MiB and 20 MiB
tensor, and a no-op) check this in every run. Without ``clear_refs`` a psutil sampler thread is
used instead. The subprocesses run with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_=65536``), so that every freed tensor of 64 KiB or more goes back to the
OS at once and RSS follows the live tensors; with glibc's default dynamic threshold (or with the
threshold fixed only just before the phase), heap fragmentation made the peak of identical runs
vary by several MiB (``--default-malloc`` to measure that way anyway). The price: large-tensor
work runs 2-3x slower there (page faults), so encode times from these runs are upper bounds.
Memory is deterministic to ~0.2 MiB this way, so a phase that takes over 20 s is measured once.

Timing: single-point updates are timed in this process, all n interleaved in shuffled rounds so
background load hits every n alike; medians and quartiles are reported. Encode times come from
the memory subprocesses (one encode per run).

Usage:
    python experiments/scaling.py                  # full run (n up to 1e6), several minutes
    python experiments/scaling.py --quick          # smoke run (n up to 1e4)
    python experiments/scaling.py --out DIR        # write scaling.{csv,json,png} to DIR
    python experiments/scaling.py --models cmanp lbanp   # a subset (default: all three)
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from cmanp_bo.architectures import build_network
from cmanp_bo.nn import CMANP, CMANPConfig
from cmanp_bo.nn.cmanp import state_size_bytes

NS_FULL = [10**2, 10**3, 10**4, 10**5, 10**6]
NS_QUICK = [10**2, 10**3, 10**4]
# the shipped 1-D checkpoints' size; other fields default (d_model 64, 4 heads, d_ff 128)
MODEL_KW = {"num_layers": 4, "num_latents": 64, "num_block_latents": 64}
BLOCK_SIZE = 1024
SEED = 0
MODELS = ("cmanp", "tnp", "lbanp")
# peers without an incremental update: ``update`` re-encodes all n + 1 points
REENCODING = ("tnp", "lbanp")
PHASES = {
    "cmanp": ("encode", "update", "stream"),
    "tnp": ("encode", "update"),
    "lbanp": ("encode", "update"),
}
LABELS = {
    "cmanp": "CMANP (streamed, blocks of 1024)",
    "tnp": "TNP-D-style full attention",
    "lbanp": "LBANP latent bottleneck",
}
SHORT = {"cmanp": "CMANP", "tnp": "TNP-D", "lbanp": "LBANP"}
COLORS = {"cmanp": "C0", "tnp": "C3", "lbanp": "C2"}
# what the memory estimate of a re-encoding peer counts, and how its encode time grows with n
ESTIMATE_TEXT = {
    "tnp": "n^2*heads*4 B, one layer's attention scores",
    "lbanp": "n*(latents*heads + 4*d_model)*4 B, one layer's latent-context scores + tokens",
}
TIME_EXPONENT = {"tnp": 2, "lbanp": 1}
LBANP_TOKEN_COPIES = 4  # token-sized tensors alive at once (tokens, normed, keys, values)
MiB = 2**20
GiB = 2**30
# memory target tolerance: 10 % relative, or this absolute spread for phases whose peak is
# within a few accounting units of zero (the kernel's RSS counters are exact to ~64 pages)
ABS_TOL_BYTES = 256 * 1024
MMAP_THRESHOLD = 65536
SLOW_PHASE_S = 20.0  # a memory phase slower than this is measured once (deterministic)
STREAM_MAX_N = 10**5  # the streaming diagnostic stops here (time budget)
CALIBRATION = {"probe_noop": 0.0, "probe_transient_1MiB": 1.0, "probe_transient_20MiB": 20.0}


# ----------------------------------------------------------------------------- models & inputs
def config() -> CMANPConfig:
    return CMANPConfig(dim_x=1, dim_y=1, **MODEL_KW)


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(SEED)  # weights do not change the cost; a fixed seed anyway
    net = build_network(name, config())
    net.requires_grad_(False)
    return net.eval()


def make_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n, 1, generator=g) * 4 - 2
    y = torch.sin(3 * x) + 0.1 * torch.randn(1, n, 1, generator=g)
    return x, y


def encode(name: str, net, x: torch.Tensor, y: torch.Tensor):
    if name == "cmanp":
        return net.encode(x, y, block_size=BLOCK_SIZE)
    return net.encode(x, y)


def state_for_update(name: str, net, x: torch.Tensor, y: torch.Tensor):
    """The state of ``n`` points that an update starts from.

    A re-encoding peer's update re-encodes the raw points and never reads the old per-layer
    tensors, so its state is built with tensors of the right shape (the same memory: TNP-D a token
    per point, LBANP ``num_latents`` latents per layer) without paying for the encode.
    """
    if name == "cmanp":
        return net.encode(x, y, block_size=BLOCK_SIZE)
    cfg = net.cfg
    rows = x.shape[-2] if name == "tnp" else cfg.num_latents
    layers = tuple(torch.zeros(1, rows, cfg.d_model) for _ in range(cfg.num_layers))
    return net.state_class(x, y, layers)


def state_bytes(name: str, state) -> int:
    if name == "cmanp":
        return state_size_bytes(state)
    return sum(t.numel() * t.element_size() for t in state.tensors())


def estimate_bytes(name: str, n: int) -> int:
    """Memory estimate (float32) of one re-encode of ``n`` points by a peer; see ESTIMATE_TEXT.

    TNP-D: attention scores of one full-attention layer, n^2 * heads * 4 bytes. LBANP: scores of
    one layer's latents reading the context, n * latents * heads * 4 bytes, plus a few token-sized
    tensors, n * d_model * 4 bytes each.
    """
    cfg = config()
    if name == "tnp":
        return n * n * cfg.num_heads * 4
    if name == "lbanp":
        return n * (cfg.num_latents * cfg.num_heads + LBANP_TOKEN_COPIES * cfg.d_model) * 4
    raise ValueError(f"no memory estimate for {name!r} (its memory does not grow with n)")


def fits(name: str, n: int, cap_bytes: int) -> bool:
    """Whether ``name`` runs at ``n`` points under the memory cap (CMANP always does)."""
    return name not in REENCODING or estimate_bytes(name, n) <= cap_bytes


# ----------------------------------------------------------------------------- memory probes
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak resident memory of a code section relative to the RSS at its start.

    ``hwm``: reset the kernel's peak-RSS counter via /proc/self/clear_refs and read VmHWM
    (exact, catches transients). ``sampled``: psutil thread polling RSS (fallback; may miss
    spikes shorter than the polling interval).
    """

    def __init__(self) -> None:
        self.method = "hwm"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_kib("VmHWM")
        except OSError:
            self.method = "sampled"

    def __enter__(self) -> PeakMeter:
        gc.collect()
        _malloc_trim()
        if self.method == "hwm":
            self.baseline = _status_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            import psutil

            proc = psutil.Process()
            self.baseline = proc.memory_info().rss
            self._peak = self.baseline
            self._stop = threading.Event()

            def poll() -> None:
                while not self._stop.is_set():
                    self._peak = max(self._peak, proc.memory_info().rss)
                    time.sleep(1e-4)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "hwm":
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._peak

    @property
    def extra(self) -> int:
        return self.peak - self.baseline


def worker(spec: dict) -> dict:
    """Run one (model, n, phase) in this fresh process and measure its peak memory."""
    torch.set_num_threads(1)
    model, n, phase = spec["model"], spec["n"], spec["phase"]
    out = {"model": model, "n": n, "phase": phase}
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    malloc = f"MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "glibc default"
    with torch.no_grad():
        if phase.startswith("probe"):
            torch.ones(1000).sum()  # initialise the allocator
            with PeakMeter() as meter:
                t0 = time.perf_counter()
                if phase != "probe_noop":
                    size = int(CALIBRATION[phase] * MiB) // 4
                    tmp = torch.ones(size)  # written, so every page is resident
                    del tmp
                seconds = time.perf_counter() - t0
            out.update(input_bytes=0, state_bytes=0)
        else:
            net = make_model(model)
            warm_up(model, net, n)
            x, y = make_inputs(n, seed=SEED)
            out["input_bytes"] = 2 * x.numel() * x.element_size()
            if phase == "update":
                state = state_for_update(model, net, x, y)
                x1, y1 = make_inputs(1, seed=n + 7)
            with PeakMeter() as meter:
                t0 = time.perf_counter()
                if phase == "encode":
                    result = encode(model, net, x, y)
                elif phase == "stream":
                    result = stream(net, x, y)
                else:
                    result = net.update(state, x1, y1)
                seconds = time.perf_counter() - t0
            out["state_bytes"] = state_bytes(model, result)
            del result
    out.update(
        method=meter.method,
        malloc=malloc,
        baseline_rss_bytes=meter.baseline,
        peak_extra_bytes=meter.extra,
        phase_seconds=seconds,
    )
    return out


def warm_up(model: str, net, n: int) -> None:
    """Run every code path once on small inputs with the phase's block shapes.

    CMANP: the first block (``min(n, 1024)`` points), a full and the last partial block on the
    absorb path, a single-point update. TNP-D, LBANP: a 64-point encode and update.
    """
    if model == "cmanp":
        rest = n % BLOCK_SIZE or BLOCK_SIZE
        for size in (min(n, BLOCK_SIZE), BLOCK_SIZE + rest):
            xw, yw = make_inputs(size, seed=1)
            sw = net.encode(xw, yw, block_size=BLOCK_SIZE)
        stream(net, *make_inputs(1 + BLOCK_SIZE + rest, seed=2))
    else:
        xw, yw = make_inputs(64, seed=1)
        sw = net.encode(xw, yw)
    sw = net.update(sw, xw[:, :1], yw[:, :1])
    net.predict(sw, xw[:, :8])


def stream(net: CMANP, x: torch.Tensor, y: torch.Tensor):
    """Diagnostic: encode the first point, absorb the rest with ``update`` in blocks of 1024."""
    state = net.encode(x[:, :1], y[:, :1])
    for start in range(1, x.shape[-2], BLOCK_SIZE):
        stop = start + BLOCK_SIZE
        state = net.update(state, x[:, start:stop], y[:, start:stop])
    return state


def run_worker(spec: dict, default_malloc: bool = False, timeout: float = 1800) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- timing
def time_updates(
    name: str, ns: list[int], max_reps: int, budget_s: float, min_reps: int = 3
) -> dict[int, list[float]]:
    """Time single-point updates at every n, interleaving the n in shuffled rounds.

    Each n gets ``clamp(budget_s / t_first, min_reps, max_reps)`` repeats. Every repeat
    absorbs a different new point into the same state of n points (states are immutable).
    """
    net = make_model(name)
    states, points = {}, {}
    for n in ns:
        x, y = make_inputs(n, seed=SEED)
        states[n] = state_for_update(name, net, x, y)
        points[n] = make_inputs(max_reps, seed=n + 7)
    times: dict[int, list[float]] = {n: [] for n in ns}
    reps = {}
    for n in ns:  # first call: warm-up and cost estimate
        xs, ys = points[n]
        t0 = time.perf_counter()
        net.update(states[n], xs[:, :1], ys[:, :1])
        first = time.perf_counter() - t0
        if first > 1.0:  # expensive: first-call overheads are negligible, keep it
            times[n].append(first)
        reps[n] = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-9))))
    rng = random.Random(SEED)
    gc.collect()
    gc.disable()
    try:
        for r in range(max(reps.values())):
            order = [n for n in ns if len(times[n]) < reps[n]]
            rng.shuffle(order)
            for n in order:
                xs, ys = points[n]
                i = r % xs.shape[-2]
                t0 = time.perf_counter()
                net.update(states[n], xs[:, i : i + 1], ys[:, i : i + 1])
                times[n].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times


# ----------------------------------------------------------------------------- reporting
def describe_machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    info = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": 1,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device_used": "cpu",
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_total_gib"] = round(psutil.virtual_memory().total / GiB, 1)
    except ImportError:
        pass
    return info


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarise(rows: list[dict], ns: list[int], models: list[str]) -> tuple[dict, dict]:
    """Per (model, n, phase): memory medians and update-time quartiles; CMANP's targets."""
    res: dict = {m: {} for m in models}
    for m in models:
        for n in ns:
            entry: dict = {}
            for phase in PHASES[m]:
                mem = [
                    r
                    for r in rows
                    if (r["model"], r["n"], r["phase"], r["measure"])
                    == (m, n, phase, "peak_memory")
                ]
                tim = [
                    r["value"]
                    for r in rows
                    if (r["model"], r["n"], r["phase"], r["measure"]) == (m, n, phase, "time")
                    and r["status"] == "ok"
                ]
                skipped = [r for r in mem if r["status"] != "ok"]
                if skipped:
                    entry[phase] = {"status": skipped[0]["status"], "note": skipped[0]["note"]}
                    continue
                ok = [r for r in mem if r["status"] == "ok"]
                e = {
                    "status": "ok",
                    "peak_extra_mib_median": statistics.median(r["value"] for r in ok) / MiB,
                    "peak_extra_mib_all": [round(r["value"] / MiB, 3) for r in ok],
                    "memory_repeats": len(ok),
                    "phase_seconds_median": statistics.median(r["phase_seconds"] for r in ok),
                    "input_mib": ok[0]["input_bytes"] / MiB,
                    "state_after_mib": ok[0]["state_bytes"] / MiB,
                }
                if tim:
                    q1, med, q3 = quartiles(tim)
                    e.update(time_median_s=med, time_q1_s=q1, time_q3_s=q3, time_repeats=len(tim))
                entry[phase] = e
            res[m][str(n)] = entry

    def med(m: str, n: int, phase: str, key: str):
        e = res[m].get(str(n), {}).get(phase, {})
        return e.get(key)

    targets: dict = {}
    if "cmanp" not in models:
        return res, targets
    mem_ns = [n for n in ns if 10**3 <= n <= 10**6]
    what = {
        "encode": "while encoding with net.encode(block_size=1024)",
        "update": "while absorbing one point with net.update",
        "stream": "(DIAGNOSTIC, not an issue target) while streaming: encode 1 point, then "
        "net.update in blocks of 1024",
    }
    for phase in PHASES["cmanp"]:
        vals = {n: med("cmanp", n, phase, "peak_extra_mib_median") for n in mem_ns}
        vals = {n: v for n, v in vals.items() if v is not None}
        lo, hi = min(vals.values()), max(vals.values())
        ratio = hi / lo if lo > 0 else float("inf")
        spread_b = (hi - lo) * MiB
        rel_ok = ratio <= 1.10
        abs_ok = spread_b <= ABS_TOL_BYTES
        key = f"cmanp_{phase}_memory_flat" + ("_diagnostic" if phase == "stream" else "")
        targets[key] = {
            "description": f"CMANP peak memory beyond inputs {what[phase]}: within 10% "
            "from n=1e3 to 1e6",
            "n_range": [min(vals), max(vals)],
            "values_mib": {str(n): round(v, 4) for n, v in vals.items()},
            "max_over_min": round(ratio, 4),
            "spread_kib": round(spread_b / 1024, 1),
            "criterion": "max/min <= 1.10, or spread <= 256 KiB (RSS accounting resolution) "
            "for phases whose peak is near zero",
            "pass": bool(rel_ok or abs_ok),
            "passed_by": "relative" if rel_ok else ("absolute" if abs_ok else None),
            "complete": max(vals) == 10**6,
        }
    n_hi = max(n for n in ns if n <= 10**5)
    t_lo = med("cmanp", 10**2, "update", "time_median_s")
    t_hi = med("cmanp", n_hi, "update", "time_median_s")
    targets["cmanp_update_time_flat"] = {
        "description": "median single-point update time at n=1e5 within 1.2x of n=1e2",
        "n_compared": [10**2, n_hi],
        "median_ms": {"100": round(t_lo * 1e3, 4), str(n_hi): round(t_hi * 1e3, 4)},
        "ratio": round(t_hi / t_lo, 4),
        "pass": bool(t_hi / t_lo <= 1.2),
        "complete": n_hi == 10**5,
        "all_n_median_ms": {
            str(n): round(med("cmanp", n, "update", "time_median_s") * 1e3, 4) for n in ns
        },
    }
    return res, targets


def extrapolate(res: dict, ns: list[int], name: str) -> None:
    """Add, for a re-encoding peer's skipped sizes, what they would have needed.

    Memory: the ``estimate_bytes`` estimate and that estimate scaled by the measured/estimate
    ratio at the largest measured n; time: the largest measured update time scaled by
    (n/n_max)^k (k = 2 for TNP-D, 1 for LBANP). Measured sizes get their measured/estimate ratio.
    """
    done = [n for n in ns if res[name][str(n)]["encode"]["status"] == "ok"]
    if not done:
        return
    n_max = max(done)
    e_max = res[name][str(n_max)]
    ratio = e_max["encode"]["peak_extra_mib_median"] * MiB / estimate_bytes(name, n_max)
    t_max = e_max["update"].get("time_median_s")
    k = TIME_EXPONENT[name]
    for n in ns:
        for phase in ("encode", "update"):
            e = res[name][str(n)][phase]
            n_eff = n + (phase == "update")
            if e["status"] == "ok":
                e["measured_over_estimate"] = round(
                    e["peak_extra_mib_median"] * MiB / estimate_bytes(name, n_eff), 3
                )
                continue
            e["estimate_gib"] = round(estimate_bytes(name, n_eff) / GiB, 1)
            e["extrapolated_gib"] = round(ratio * estimate_bytes(name, n_eff) / GiB, 1)
            e["extrapolation"] = (
                f"estimate x measured/estimate ratio {ratio:.2f} at n={n_max}; "
                f"time x (n/n_max)^{k}; NOT measured"
            )
            if phase == "update" and t_max is not None:
                e["extrapolated_update_s"] = round(t_max * (n_eff / (n_max + 1)) ** k, 1)


def plot(res: dict, ns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    models = list(res)
    styles = {m: dict(color=COLORS[m]) for m in models}
    floor = 1e-3  # MiB; plotted floor for near-zero peaks
    ax = axes[0]
    for m in models:
        look = {"encode": ("o", "-"), "update": ("s", "--"), "stream": ("^", ":")}
        for phase in PHASES[m]:
            marker, ls = look[phase]
            xs, ys, sx, sy = [], [], [], []
            for n in ns:
                e = res[m][str(n)][phase]
                if e["status"] == "ok":
                    xs.append(n)
                    ys.append(max(e["peak_extra_mib_median"], floor))
                elif m in REENCODING:
                    sx.append(n)
                    sy.append(estimate_bytes(m, n + (phase == "update")) / MiB)
            what = {
                "encode": "encode" + (" (blocks of 1024)" if m == "cmanp" else ""),
                "update": "absorb 1 point" if m == "cmanp" else "absorb 1 point (re-encode n+1)",
                "stream": "diagnostic: encode 1 pt + update in blocks",
            }[phase]
            ax.plot(xs, ys, marker=marker, ls=ls, label=f"{SHORT[m]}: {what}", **styles[m])
            if sx and phase == "encode":
                ax.plot(
                    sx,
                    sy,
                    marker="x",
                    ls=":",
                    label=f"{SHORT[m]} skipped: estimate {ESTIMATE_TEXT[m].split(',')[0]}",
                    **styles[m],
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="context points n",
        ylabel="peak memory beyond inputs (MiB)",
        title="Peak memory (separate processes)",
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    for ax, phase, title in (
        (axes[1], "update", "Time to absorb one point"),
        (axes[2], "encode", "Time to encode n points (memory runs, median)"),
    ):
        for m in models:
            xs, med, lo, hi = [], [], [], []
            for n in ns:
                e = res[m][str(n)][phase]
                if e["status"] != "ok":
                    continue
                xs.append(n)
                if phase == "update":
                    med.append(e["time_median_s"] * 1e3)
                    lo.append(med[-1] - e["time_q1_s"] * 1e3)
                    hi.append(e["time_q3_s"] * 1e3 - med[-1])
                else:
                    med.append(e["phase_seconds_median"] * 1e3)
                    lo.append(0)
                    hi.append(0)
            label = LABELS[m] + (
                " (re-encode n+1)" if m in REENCODING and phase == "update" else ""
            )
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, **styles[m])
            ex = [
                (n, res[m][str(n)][phase]["extrapolated_update_s"] * 1e3)
                for n in ns
                if "extrapolated_update_s" in res[m][str(n)][phase]
            ]
            if ex and xs:
                ax.plot(
                    [xs[-1]] + [n for n, _ in ex],
                    [med[-1]] + [t for _, t in ex],
                    ls=":",
                    marker="o",
                    mfc="none",
                    label=f"{SHORT[m]} extrapolated ~n^{TIME_EXPONENT[m]} (not run)",
                    **styles[m],
                )
        ax.set(xscale="log", yscale="log", xlabel="context points n", ylabel="ms", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_title("Time to absorb one point (median, IQR)")
    title = " vs ".join(SHORT[m] for m in models)
    fig.suptitle(f"{title}, batch 1, d_x=1, float32, 1 CPU thread", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: n up to 1e4, fewer repeats")
    p.add_argument("--out", default="experiments/results", help="output directory")
    p.add_argument(
        "--mem-cap-gib",
        type=float,
        default=None,
        help="skip a re-encoding peer (TNP-D, LBANP) where its memory estimate exceeds this "
        "(default 8, quick 1)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models to measure (default: all three)",
    )
    p.add_argument(
        "--mem-repeats",
        type=int,
        default=2,
        help="memory runs (subprocesses) per (model, n, phase) (default 2)",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="measure memory with glibc's default (dynamic) mmap threshold",
    )
    p.add_argument(
        "--update-repeats",
        type=int,
        default=None,
        help="max timed updates per n (default 500, quick 100)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    models = [m for m in MODELS if m in args.models]  # canonical order, no duplicates
    ns = NS_QUICK if args.quick else NS_FULL
    max_reps = args.update_repeats or (100 if args.quick else 500)
    if args.mem_cap_gib is None:
        args.mem_cap_gib = 1.0 if args.quick else 8.0
    cap_bytes = int(args.mem_cap_gib * GiB)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    machine["load_average_start"] = os.getloadavg()
    rows: list[dict] = []

    def row(**kw) -> dict:
        base = dict(
            model="",
            n="",
            phase="",
            measure="",
            repeat="",
            status="ok",
            value="",
            unit="",
            phase_seconds="",
            baseline_rss_bytes="",
            input_bytes="",
            state_bytes="",
            method="",
            note="",
        )
        base.update(kw)
        rows.append(base)
        return base

    # 1. calibration of the memory method
    calibration = []
    print("calibrating the memory probe ...", flush=True)
    for phase, expected in CALIBRATION.items():
        for r in range(2):
            o = run_worker({"model": "probe", "n": 0, "phase": phase}, args.default_malloc)
            row(
                model="calibration",
                n=0,
                phase=phase,
                measure="peak_memory",
                repeat=r,
                value=o["peak_extra_bytes"],
                unit="bytes",
                phase_seconds=o["phase_seconds"],
                baseline_rss_bytes=o["baseline_rss_bytes"],
                method=o["method"],
                note=f"expected {expected} MiB",
            )
            calibration.append(
                {
                    "probe": phase,
                    "expected_mib": expected,
                    "measured_mib": round(o["peak_extra_bytes"] / MiB, 4),
                    "method": o["method"],
                }
            )
    calib_ok = all(
        abs(c["measured_mib"] - c["expected_mib"]) <= 0.25 + 0.05 * c["expected_mib"]
        for c in calibration
    )
    for c in calibration:
        print(
            f"  {c['probe']:<24} expected {c['expected_mib']:5.1f} MiB  "
            f"measured {c['measured_mib']:8.3f} MiB",
            flush=True,
        )

    # 2. peak memory, one subprocess per (model, n, phase, repeat)
    for m in models:
        for n in ns:
            for phase in PHASES[m]:
                n_eff = n + (phase == "update" and m in REENCODING)
                if not fits(m, n_eff, cap_bytes):
                    need = estimate_bytes(m, n_eff) / GiB
                    note = (
                        f"skipped (would need {need:.3g} GiB by the estimate "
                        f"{ESTIMATE_TEXT[m]}; cap {args.mem_cap_gib:g} GiB)"
                    )
                    row(
                        model=m,
                        n=n,
                        phase=phase,
                        measure="peak_memory",
                        status="skipped",
                        note=note,
                    )
                    print(f"  {m:<5} n={n:<8} {phase:<6} {note}", flush=True)
                    continue
                if phase == "stream" and n > STREAM_MAX_N:
                    row(
                        model=m,
                        n=n,
                        phase=phase,
                        measure="peak_memory",
                        status="not_run",
                        note=f"diagnostic limited to n <= {STREAM_MAX_N:g} (time budget)",
                    )
                    continue
                for r in range(args.mem_repeats):
                    o = run_worker({"model": m, "n": n, "phase": phase}, args.default_malloc)
                    row(
                        model=m,
                        n=n,
                        phase=phase,
                        measure="peak_memory",
                        repeat=r,
                        value=o["peak_extra_bytes"],
                        unit="bytes",
                        phase_seconds=o["phase_seconds"],
                        baseline_rss_bytes=o["baseline_rss_bytes"],
                        input_bytes=o["input_bytes"],
                        state_bytes=o["state_bytes"],
                        method=f"{o['method']}; {o['malloc']}",
                        note=f"{m} update = re-encode n+1 points"
                        if m in REENCODING and phase == "update"
                        else ("diagnostic" if phase == "stream" else ""),
                    )
                    print(
                        f"  {m:<5} n={n:<8} {phase:<6} rep {r}: "
                        f"peak +{o['peak_extra_bytes'] / MiB:9.3f} MiB "
                        f"({o['phase_seconds']:.3f} s)",
                        flush=True,
                    )
                    if o["phase_seconds"] > SLOW_PHASE_S:
                        break  # deterministic to ~0.2 MiB; one run of a slow phase

    # 3. single-point update time, this process, n interleaved
    for m in models:
        fit = [n for n in ns if fits(m, n + 1, cap_bytes)]
        budget = 10.0 if m == "cmanp" else (4.0 if args.quick else 10.0)
        print(f"timing {m} updates at n={fit} ...", flush=True)
        times = time_updates(m, fit, max_reps=max_reps, budget_s=budget)
        for n in ns:
            if n not in fit:
                row(
                    model=m,
                    n=n,
                    phase="update",
                    measure="time",
                    status="skipped",
                    note="skipped (memory cap)",
                )
                continue
            for r, t in enumerate(times[n]):
                row(
                    model=m,
                    n=n,
                    phase="update",
                    measure="time",
                    repeat=r,
                    value=t,
                    unit="s",
                    note="re-encode n+1 points" if m in REENCODING else "",
                )
            print(
                f"  {m:<5} n={n:<8} update median {statistics.median(times[n]) * 1e3:10.3f} ms"
                f" over {len(times[n])} repeats",
                flush=True,
            )

    res, targets = summarise(rows, ns, models)
    for m in models:
        if m in REENCODING:
            extrapolate(res, ns, m)
    machine["load_average_end"] = os.getloadavg()
    wall = time.perf_counter() - t_start
    command = shlex.join(["python", "experiments/scaling.py", *(argv or sys.argv[1:])])
    summary = {
        "benchmark": "scaling",
        "command": command,
        "quick": args.quick,
        "wall_seconds": round(wall, 1),
        "machine": machine,
        "setup": {
            "model_config": config().to_dict(),
            "weights": f"random init, torch.manual_seed({SEED}) (weights do not change cost)",
            "batch": 1,
            "dim_x": 1,
            "dim_y": 1,
            "dtype": "float32",
            "threads": 1,
            "cmanp_block_size": BLOCK_SIZE,
            "ns": ns,
            "models": models,
            "tnp": "surrogates.tnp.TNPD: embedder + num_layers SelfAttentionLayer over all "
            "context tokens (same d_model/heads/d_ff/layers); update re-encodes n+1",
            "lbanp": "surrogates.lbanp.LBANP: embedder + num_layers blocks in which num_latents "
            "latents cross-attend to all context tokens, then self-attend (same "
            "d_model/heads/d_ff/layers/num_latents); update re-encodes n+1",
            "memory_cap_gib": args.mem_cap_gib,
            "tnp_memory_cap_gib": args.mem_cap_gib,
            "memory_estimates": {m: ESTIMATE_TEXT[m] for m in models if m in REENCODING},
        },
        "method": {
            "memory": "one fresh subprocess per (model, n, phase, repeat): build net, warm up on "
            "small inputs with the same block shapes, create inputs (and the state "
            "for the update phase), gc + malloc_trim, read VmRSS as baseline, reset "
            "the kernel peak-RSS counter (echo 5 > /proc/self/clear_refs), run the "
            "phase, read VmHWM; reported = VmHWM - baseline (memory beyond inputs, "
            "weights and state). Calibrated by transient 1 and 20 MiB tensors.",
            "malloc": "glibc default (dynamic mmap threshold)"
            if args.default_malloc
            else f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} in the subprocesses: freed "
            "tensors >= 64 KiB return to the OS at once, so RSS follows live tensors "
            "(the default dynamic threshold leaves heap fragmentation that made "
            "identical runs differ by several MiB)",
            "memory_method_used": sorted({c["method"] for c in calibration}),
            "timing": "time.perf_counter around one net.update(state, x1, y1) call in the main "
            "process, all n interleaved in shuffled rounds, gc disabled; each repeat "
            "absorbs a different point into the same state of n points; median and "
            "quartiles. Encode times: one encode per memory subprocess (median).",
        },
        "calibration": calibration,
        "calibration_ok": calib_ok,
        "results": res,
        "targets": targets,
    }
    with open(out / "scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out / "scaling.json", "w") as f:
        json.dump(summary, f, indent=2)
    plot(res, ns, out / "scaling.png")

    print(
        f"\n{'model':<6} {'n':>8} {'enc peak MiB':>13} {'enc s':>8} {'upd peak MiB':>13} "
        f"{'upd median ms':>14}"
    )
    for m in models:
        for n in ns:
            e, u = res[m][str(n)]["encode"], res[m][str(n)]["update"]
            if e["status"] != "ok":
                print(f"{m:<6} {n:>8}  {e['note']}")
                continue
            ut = f"{u['time_median_s'] * 1e3:14.3f}" if "time_median_s" in u else f"{'-':>14}"
            up = f"{u['peak_extra_mib_median']:13.3f}" if u["status"] == "ok" else f"{'-':>13}"
            print(
                f"{m:<6} {n:>8} {e['peak_extra_mib_median']:13.3f} "
                f"{e['phase_seconds_median']:8.3f} {up} {ut}"
            )
    for k, t in targets.items():
        print(
            f"target {k}: {'PASS' if t['pass'] else 'FAIL'}"
            f"{'' if t['complete'] else ' (n range ' + str(t.get('n_range', '')) + ')'}"
        )
    print(f"calibration ok: {calib_ok}; wall {wall:.0f} s; wrote {out}/scaling.{{csv,json,png}}")


if __name__ == "__main__":
    main()
