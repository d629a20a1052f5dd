"""Benchmark ``mmcurate audit``: SEED-Bench's 14,232 questions through a panel, with a projection.

Prints ingest / screen / report times, samples/s (one sample = one question asked of one
member, control questions included) and the projected time for MMStar's scale -- 22,401
items x 8 members -- at the measured rate, for members run one after another and for 8
endpoints serving in parallel; and, from the members' own model time, this panel's time as
``screen`` runs it (in-process members take turns, remote members run at the same time: the
slowest lane sets the time, not the sum). Also prints the blind-answerable share beyond chance.

Two ways to measure the rate:

* local (default): the given panel (default: the shipped offline panel, Qwen2.5-Coder-1.5B
  via llama.cpp) audits ``--limit`` items of ``--source``;
* ``--endpoint``: starts a real OpenAI-compatible server on 127.0.0.1 (``python -m
  llama_cpp.server``, needs llama-cpp-python[server]) with the GGUF of ``--endpoint-model``
  and audits through a one-member ``backend = "openai"`` panel, i.e. over HTTP exactly as a
  vLLM panel would run (``--concurrency`` parallel requests).

The full run (no ``--limit``, default panel) takes hours on 2 CPU cores; ``--limit 200``
gives the rate in a few minutes. Each run uses a fresh cache in its report folder (never the
per-user cache ``audit`` shares by default), so the rate is never a cache hit rate. Only one process on the machine may load the 1.5B model at a time.

    python bench/audit.py --limit 200
    python bench/audit.py --from-summary REPORT/summary.json   # the projection from a finished audit's own rate
    python bench/audit.py --endpoint --endpoint-model package:smollm2-135m-instruct --limit 300
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEED = REPO.parent / "shared" / "data" / "text_pools" / "SEEDBench_IMG_vila13b.xlsx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_file: Path, port: int, threads: int) -> subprocess.Popen:
    """A llama.cpp OpenAI-compatible server on 127.0.0.1 (logits for every token, so logprobs work)."""
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_file), "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--logits_all", "true", "--n_ctx", "2048",
    ]
    # The server logs a lot at load time: into a file, never an unread pipe (a full pipe blocks it).
    log = open(tempfile.mkstemp(prefix="mmcurate-llama-server-", suffix=".log")[1], "w+b")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # bounded readiness loop
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"llama_cpp.server exited with {proc.returncode}: {log.read().decode(errors='replace')[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("llama_cpp.server did not become ready within 120 s")


def _endpoint_panel(base_url: str, served_model: str, concurrency: int, control_size: int, method: str):
    from filters.panel import panel_from_dict

    return panel_from_dict(
        {
            "panel": {"name": "endpoint-bench", "max_hits": 0, "control_size": control_size, "at_chance": "count"},
            "member": [{"name": "endpoint", "backend": "openai", "base_url": base_url, "model": served_model, "method": method, "concurrency": concurrency, "shots": 0}],
        },
        source="bench-endpoint",
    )


def _from_summary(path: Path) -> None:
    """Print the rate and projections of a finished audit (e.g. the whole of SEED-Bench, hours long)."""
    from curate.throughput import projection, projection_line, throughput_line

    summary = json.loads(path.read_text())
    members = summary.get("members", {})
    for name, m in members.items():
        if m.get("throughput"):
            print(throughput_line(name, m["throughput"]))
    proj = projection(members)
    if proj is None:
        raise SystemExit(f"{path}: no fresh model calls recorded (a fully cached run measures no rate)")
    print(projection_line(proj))
    if summary.get("beyond_chance"):
        bc = summary["beyond_chance"]
        print(f"blind-answerable beyond chance: {bc['share']:.4f} (95 % CI {bc['lo']:.4f}-{bc['hi']:.4f}); raw {summary['blind_share']}")
    n = (summary.get("sample") or {}).get("of") or summary["n_items"]  # a --sample run projects to the whole benchmark
    whole = projection(members, items=n, n_members=len(members))
    print(f"all {n:,} items of {summary.get('label')} with this panel at that rate: {whole['hours_in_turn']:.2f} h of model time, "
          f"{whole['hours_this_panel']:.2f} h as the screen runs its members")
    print(json.dumps({"source": summary.get("label"), "items": n, "samples_per_s": round(proj["samples_per_s"], 3), **_projection_figures(proj)}))


def _projection_figures(proj: dict) -> dict:
    """The JSON keys both modes print (MMStar's scale, ``curate.throughput.MMSTAR_POOL``)."""
    out = {"projected_hours_22401x8_sequential": round(proj["hours_in_turn"], 2),
           "projected_hours_22401x8_8_parallel_endpoints": round(proj["hours_parallel"], 2)}
    if proj.get("hours_this_panel") is not None and proj.get("panel_members"):
        out["projected_hours_22401_this_panel"] = round(proj["hours_this_panel"], 2)  # concurrent members: the slowest lane
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=SEED, help="benchmark file (default: SEED-Bench, 14,232 questions)")
    ap.add_argument("--panel", type=Path, default=None, help="panel.toml (default: the shipped offline panel)")
    ap.add_argument("--limit", type=int, default=None, help="audit only the first N items (default: all)")
    ap.add_argument("--report", type=Path, default=None, help="report folder (default: a fresh temporary folder)")
    ap.add_argument("--endpoint", action="store_true", help="measure through a local OpenAI-compatible llama.cpp server")
    ap.add_argument("--endpoint-model", default="package:smollm2-135m-instruct", help="GGUF file or package:<id> for --endpoint")
    ap.add_argument("--concurrency", type=int, default=2, help="parallel HTTP requests for --endpoint")
    ap.add_argument("--endpoint-method", default="loglik", choices=("loglik", "generate"),
                    help="how the --endpoint member is asked (a model whose first token after 'Answer:' is end-of-text gets no logprobs from llama.cpp: use generate)")
    ap.add_argument("--threads", type=int, default=2, help="server threads for --endpoint")
    ap.add_argument("--control-size", type=int, default=20, help="control questions for the --endpoint panel")
    ap.add_argument("--from-summary", type=Path, default=None,
                    help="no new run: the projection from the member throughput a finished `mmcurate audit` recorded")
    args = ap.parse_args()
    if args.from_summary is not None:
        _from_summary(args.from_summary)
        return

    from curate.audit import audit_table, resolve_panel
    from curate.audit_summary import headline, summarize
    from curate.ingest import ingest
    from curate.report import write_report
    from curate.throughput import projection, projection_line

    report = args.report or Path(tempfile.mkdtemp(prefix="mmcurate-bench-audit-"))
    report.mkdir(parents=True, exist_ok=True)
    work = report / "workspace"
    if (work / "screen_cache.sqlite").exists():
        raise SystemExit(f"{work}/screen_cache.sqlite exists: a cached run would measure cache hits; use a fresh --report folder")

    t0 = time.perf_counter()
    items = ingest([args.source], out=work)
    t_ingest = time.perf_counter() - t0
    n_items = items.height if args.limit is None else min(args.limit, items.height)
    print(f"ingest: {items.height} items from {args.source.name} in {t_ingest:.1f} s ({items.height / t_ingest:.0f} items/s)")

    server = None
    try:
        if args.endpoint:
            from filters.backends import model_file
            from filters.panel import Member

            gguf = model_file(Member(name="x", model=args.endpoint_model, backend="llamacpp"))
            port = _free_port()
            t = time.perf_counter()
            server = _start_server(gguf, port, args.threads)
            print(f"endpoint: llama_cpp.server on 127.0.0.1:{port} with {gguf.name}, ready in {time.perf_counter() - t:.1f} s")
            panel = _endpoint_panel(f"http://127.0.0.1:{port}/v1", str(gguf), args.concurrency, args.control_size, args.endpoint_method)
        else:
            panel = resolve_panel(args.panel)
        n_members = len(panel.members)
        controls = panel.control_size * n_members

        t0 = time.perf_counter()
        table, info, threshold = audit_table([work], panel=panel, workdir=work, limit=args.limit, progress=True,
                                             cache_path=work / "screen_cache.sqlite")
        t_screen = time.perf_counter() - t0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    t0 = time.perf_counter()
    summary = summarize(table, threshold=threshold, panel_info=info, label=args.source.name)
    write_report(summary, report)
    t_report = time.perf_counter() - t0

    samples = n_items * n_members + controls
    # the whole run's wall time, controls included: the rate a user waits at
    run = {"run": {"asked": samples, "model_seconds": t_screen}}
    proj = projection(run)
    rate = proj["samples_per_s"]
    figures = {
        "source": args.source.name,
        "items": n_items,
        "members": n_members,
        "mode": f"endpoint (OpenAI-compatible HTTP, llama.cpp server, {args.endpoint_method})" if args.endpoint else "local panel",
        "screen_seconds": round(t_screen, 1),
        "samples": samples,
        "samples_per_s": round(rate, 3),
        "report_seconds": round(t_report, 2),
        "blind_share": summary["blind_share"],
        "beyond_chance": summary.get("beyond_chance"),
        **_projection_figures(proj),
    }
    own = projection(summary["members"])  # the members' own model time, concurrency accounted for
    print(f"screen: {samples} samples ({n_items} items x {n_members} member(s) + {controls} controls) in {t_screen:.1f} s -> {rate:.2f} samples/s")
    print(f"report: {report / 'report.html'} in {t_report:.2f} s; {headline(summary)}")
    print(projection_line(proj) + " (a GPU vLLM endpoint's rate replaces this machine's; re-run with --endpoint against it via --panel)")
    if own is not None:
        print("from the members' own model time: " + projection_line(own))
        figures["projected_hours_22401_this_panel"] = round(own["hours_this_panel"], 2)
    if args.limit is not None and args.limit < items.height:
        whole = projection(run, items=items.height, n_members=n_members)
        print(f"projection for all {items.height:,} items of {args.source.name}: {whole['hours_in_turn']:.1f} h")
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
