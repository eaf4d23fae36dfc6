"""docs/performance.md's tables, generated from benchmarks/results/*.json.

Only the part between the two markers is rewritten; the prose around it is kept.
"""

from __future__ import annotations

import json

from benchmarks.common import RESULTS, ROOT, ratio

DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- BEGIN GENERATED: python -m benchmarks.report -->", "<!-- END GENERATED -->"


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{x:.{digits}g}"
    return str(x)


def _row(bench: str, what: str, ours, base, ratio, note: str = "") -> str:
    return f"| {bench} | {what} | {_f(ours)} | {_f(base)} | {_f(ratio)} | {note} |"


def train_rows(r: dict) -> list[str]:
    f = r["figures"]
    return [
        _row("train vs TRL DPOTrainer", "step-1 loss (ln 2 = 0.6931)", f["step1_loss_ours"],
             f["step1_loss_trl"], None),
        _row("", f"max abs Δ loss over {r['sizes']['steps']} steps (tolerance "
                 f"{f['loss_tolerance']:g})", f["max_abs_loss_diff"], None, None,
             "within tolerance" if f["losses_equal_within_tolerance"] else "**outside tolerance**"),
        _row("", "s/step (steady, steps 2..k)", f["steady_step_seconds_ours"],
             f["steady_step_seconds_trl"], f["step_time_ratio_ours_over_trl"], "ratio < 1: ours faster"),
        _row("", "peak RSS MiB (own process)", f["peak_rss_mib_ours"], f["peak_rss_mib_trl"],
             f["peak_rss_ratio_ours_over_trl"], "ratio < 1: ours smaller"),
    ]


def ranking_rows(r: dict) -> list[str]:
    f = r["figures"]
    base = f[f"pairs_per_s_{f['baseline']}"]
    return [
        _row("ranking (PairRM)", "pairs/s, full matrix", f["pairs_per_s_ours_full"], base,
             f["speedup_full_vs_llm_blender"], f"baseline: {f['baseline']}; ratio > 1: ours faster"),
        _row("", "pairs/s, tournament", f["pairs_per_s_ours_tournament"], base,
             f["speedup_tournament_vs_llm_blender"], ""),
        _row("", "ordered comparisons / prompt (tournament vs full)",
             f["ordered_comparisons_per_prompt_tournament"],
             f["ordered_comparisons_per_prompt_full"], None, ""),
        _row("", "tournament best / worst = full matrix's", f["tournament_best_agrees_with_full"],
             f["tournament_worst_agrees_with_full"], None, "fraction of prompts (best, worst)"),
        _row("", "max abs(score − llm-blender bs1 score)", f["max_abs_score_diff_vs_llm_blender_bs1"],
             None, None, ""),
    ]


def reward_model_rows(r: dict) -> list[str]:
    f = r["figures"]
    return [
        _row("ranking (reward model)", "conversations/s, batched vs one per forward",
             f["conversations_per_s_ours"], f["conversations_per_s_plain_transformers"],
             f["speedup_vs_plain_transformers"], "baseline: plain transformers loop; ratio > 1: ours "
             f"faster; load {r['machine']['load_avg_1m_at_write']} on {r['machine']['cores']} cores"),
        _row("", "max abs(score − plain transformers score)", f["max_abs_score_diff"], None, None,
             "same best/worst" if f["same_best_worst"] else "**best/worst differ**"),
    ]


def pairrm_real_size_rows(r: dict) -> list[str]:
    f = r["figures"]
    base = f[f"prompts_per_s_{f['baseline']}"]
    return [
        _row("ranking (PairRM, real size)", "prompts/s, tournament", f["prompts_per_s_ours_tournament"],
             base, f["speedup_tournament_vs_llm_blender"],
             f"baseline: {f['baseline']}; ratio > 1: ours faster; same round only: "
             f"{_f(f.get('speedup_tournament_vs_llm_blender_round1'))} (tournament), "
             f"{_f(f.get('speedup_full_vs_llm_blender_round1'))} (full); load "
             f"{r['machine']['load_avg_1m_at_write']} on {r['machine']['cores']} cores"),
        _row("", "prompts/s, full matrix", f["prompts_per_s_ours_full"], base,
             f["speedup_full_vs_llm_blender"], "full matrix's best/worst = llm-blender's: "
             + ("yes" if f["full_best_worst_equal_llm_blender"] else "**no**")),
        _row("", "tournament best / worst = llm-blender's", f["tournament_best_agrees_with_llm_blender"],
             f["tournament_worst_agrees_with_llm_blender"], None,
             "fraction of prompts (best, worst); random weights"),
    ]


def generation_rows(r: dict) -> list[str]:
    f = r["figures"]
    rows = []
    for name, what in (("hf", "hf backend (Ray Data) vs plain generate"),
                       ("vllm", "vllm backend (ray.data.llm) vs plain vllm.LLM")):
        ours, plain = f"{name}_backend", f"plain_{name}"
        if f"{ours}_over_{plain}" not in f:
            continue
        rows.append(_row("", f"tokens/s, {what}, end to end", f[f"tokens_per_s_{ours}"],
                         f[f"tokens_per_s_{plain}"], f[f"{ours}_over_{plain}"],
                         "ratio > 1: ours faster; mostly start-up at this size"))
        rows.append(_row("", f"tokens/s, {what}, marginal", f[f"marginal_tokens_per_s_{ours}"],
                         f[f"marginal_tokens_per_s_{plain}"], f[f"{ours}_over_{plain}_marginal"],
                         "start-up cancelled: the paper-scale rate"))
    if "plain_vllm_over_plain_hf_marginal" in f:
        rows.append(_row("", "plain vLLM vs plain hf generate, marginal", None, None,
                         f["plain_vllm_over_plain_hf_marginal"], ""))
    if "vllm_backend_over_hf_backend" in f:
        rows.append(_row("", "vllm backend vs hf backend, end to end / marginal",
                         f["vllm_backend_over_hf_backend"], None,
                         f["vllm_backend_over_hf_backend_marginal"], "ours column: end to end"))
    errors = [f"{k}: {v[:120]}" for k, v in f.items() if k.endswith("_error")]
    rows += [_row("", "error", None, None, None, e.replace("|", "/")) for e in errors]
    if rows:
        rows[0] = rows[0].replace("|  |", f"| generation ({r['sizes']['device']}) |", 1)
    return rows


def split_rows(r: dict) -> list[str]:
    """Wall and stage seconds of one iteration; the baseline column is the measurement this one
    replaced (`previous`, with its date), so a pipeline change shows as before and after."""
    f, before = r["figures"], r.get("previous") or {}
    wall_before = before.get("wall_seconds")
    stage_before = before.get("stage_seconds", {})
    since = f"; baseline: the split of {before['date'][:16]}" if before else ""
    rows = [_row("one tiny iteration", "wall seconds", f["wall_seconds"], wall_before,
                 ratio(f["wall_seconds"], wall_before),
                 f"{r['sizes']['generation_backend']} generation, "
                 f"{r['sizes']['ranking_backend']} ranking{since}")]
    for name, seconds in f["raw"]["stage_seconds"].items():
        rows.append(_row("", f"s: {name}", seconds, stage_before.get(name),
                         ratio(seconds, stage_before.get(name)),
                         f"share {f['share_' + name]:.2f}"))
    shares = {k[len("share_"):]: v for k, v in f.items()
              if k.startswith("share_") and k[len("share_"):] not in f["raw"]["stage_seconds"]}
    rows += [_row("", f"share: {k}", v, None, None, "") for k, v in shares.items()]
    rows.append(_row("", "Ray overhead fraction", f["ray_overhead_fraction"], None, None,
                     r["sizes"]["ray_overhead_definition"]))
    return rows


def scaling_rows(r: dict) -> list[str]:
    rows = []
    for gpus, v in r["figures"]["by_gpus"].items():
        stages = ", ".join(f"{k} {s / 60:.0f}m" for k, s in v["stages_seconds"].items() if s >= 30)
        rows.append(_row("paper iteration on H100s (model)", f"{gpus} GPUs: hours",
                         v["total_hours"], v["total_hours_full_matrix_ranking"], None,
                         f"baseline column: full-matrix ranking; {stages}"))
    return rows


def memory_rows(r: dict) -> list[str]:
    f, z = r["figures"], r["sizes"]
    scale = z["scale"]
    return [
        _row("driver memory (sharded stage)", f"peak RSS MiB, ×{scale} rows",
             f["sharded_x" + str(scale)]["peak_rss_mib"],
             f["gathered_x" + str(scale)]["peak_rss_mib"], None,
             f"baseline: driver gathers the output; {z['stage']}, {z['prompts_x1']}×{scale} "
             f"prompts × {z['candidates']}, shards of {z['shard_size']}"),
        _row("", f"peak RSS ratio ×{scale} / ×1", f["sharded_peak_ratio"],
             f["gathered_peak_ratio"], None, "near 1: driver memory flat as rows grow"),
        _row("", f"wall seconds, ×{scale} rows", f["sharded_x" + str(scale)]["seconds"],
             f["gathered_x" + str(scale)]["seconds"], None,
             "the price: each shard starts its own actor pool (load average "
             f"{f['sharded_x' + str(scale)]['load_avg_1m'][0]} while measured)"),
    ]


def e2e_rows(r: dict) -> list[str]:
    f = r["figures"]
    return [
        _row("trainer end to end vs TRL", "seconds per iteration (ref pass + training + save)",
             f["end_to_end_seconds_ours"], f["end_to_end_seconds_trl"],
             f["end_to_end_ratio_ours_over_trl"], "ours: train_policy (Ray Train); Ray start apart"),
        _row("", "s/step (steady)", f["steady_step_seconds_ours"], f["steady_step_seconds_trl"],
             f["step_time_ratio_ours_over_trl"], "ratio < 1: ours faster"),
        _row("", "peak RSS MiB per process", f["peak_rss_mib_ours_worker"], f["peak_rss_mib_trl"],
             ratio(f["peak_rss_mib_ours_worker"], f["peak_rss_mib_trl"]),
             f"ours: the Ray Train worker (driver {f['peak_rss_mib_ours_driver']:.0f})"),
    ]


def variant_rows(r: dict) -> list[str]:
    f = r["figures"]
    return [
        _row("trainer variants (length-skewed pairs)", "tokens/s, packed vs padded",
             f["tokens_per_s_packed"], f["tokens_per_s_padded"],
             f["packed_over_padded_tokens_per_s"], "real tokens; ratio > 1: packing faster"),
        _row("", f"s/step, LoRA r={r['sizes']['lora_rank']} vs full",
             f["steady_step_seconds_lora_padded"], f["steady_step_seconds_padded"],
             f["lora_over_full_step_seconds"], "ratio < 1: LoRA faster"),
        _row("", "peak RSS MiB, packed vs padded", f["peak_rss_mib_packed"],
             f["peak_rss_mib_padded"], ratio(f["peak_rss_mib_packed"], f["peak_rss_mib_padded"]),
             "ratio < 1: packing smaller (no padded activations)"),
        _row("", "peak RSS MiB, LoRA vs full", f["peak_rss_mib_lora_padded"],
             f["peak_rss_mib_padded"], f["lora_over_full_peak_rss"], "ratio < 1: LoRA smaller"),
    ]


def load_memory_rows(r: dict) -> list[str]:
    f, ranks = r["figures"], r["sizes"]["ranks"]
    peak = {m: max(f[f"{m}_peak_mib_rank{k}"] for k in range(ranks)) for m in ("sharded", "full")}
    return [_row("trainer load (θ_t → FSDP2)", f"peak MiB per rank above imports, {ranks} ranks",
                 peak["sharded"], peak["full"], f["sharded_over_full_peak"],
                 "baseline: full load then fully_shard; ours: meta + sharded reads")]


def shared_engine_rows(r: dict) -> list[str]:
    f = r["figures"]
    separate, shared = (next(run for run in f["runs"] if run["share_engine"] is flag)
                        for flag in (False, True))
    return [_row("shared vLLM engine", "s of self_instruct + generations, shared vs one per stage",
                 f["generating_seconds_shared"], f["generating_seconds_separate"],
                 f["generating_seconds_shared"] / f["generating_seconds_separate"],
                 f"ratio < 1: shared faster; new /dev/shm segments {shared['new_psm_segments']} vs "
                 f"{separate['new_psm_segments']}; load {r['machine']['load_avg_1m_at_write']}")]


def engine_reload_rows(r: dict) -> list[str]:
    f = r["figures"]
    return [_row("vLLM engine, next model", "s to answer with a 2nd model: weights reloaded vs "
                 "release + new engine", f["switch_seconds"], f["release_and_fresh_seconds"],
                 f["switch_over_restart"],
                 f"ratio < 1: reload faster; same answers: {_f(f['answers_equal'])}; "
                 f"load {r['machine']['load_avg_1m_at_write']}")]


def engine_start_rows(r: dict) -> list[str]:
    f = r["figures"]
    load = r["machine"]["load_avg_1m_at_write"]
    return [_row("vLLM engine on CPU, in its actor", "s of engine start (first call − warm call): "
                 "in process vs EngineCore + worker processes", f["in_process_start_seconds"],
                 f["subprocesses_start_seconds"], f["start_ratio"],
                 f"ratio < 1: in process faster; same answers: {_f(f['same_answers'])}; load {load}"),
            _row("", "s of a warm 12-prompt call", f["in_process_warm_call_seconds"],
                 f["subprocesses_warm_call_seconds"], f["warm_call_ratio"], "")]


def ranker_cost_rows(r: dict) -> list[str]:
    return [_row(f"ranker cost ({name})", "prompts/s (median); comparisons or requests per prompt",
                 c["prompts_per_s"], None, None, f"{_f(c['comparisons_per_prompt'])} per prompt")
            for name, c in r["figures"].items() if isinstance(c, dict) and "prompts_per_s" in c]


FORMATTERS = [("train_vs_trl", train_rows), ("ranking", ranking_rows),
              ("reward_model", reward_model_rows), ("pairrm_real_size", pairrm_real_size_rows),
              ("generation_cpu", generation_rows), ("generation_gpu", generation_rows),
              ("iteration_split", split_rows), ("training_gpu", None), ("scaling_paper", scaling_rows),
              ("driver_memory", memory_rows), ("trainer_e2e", e2e_rows),
              ("training_variants", variant_rows),
              ("sharded_load_memory", load_memory_rows), ("shared_engine", shared_engine_rows),
              ("engine_reload", engine_reload_rows), ("engine_start", engine_start_rows),
              ("ranker_costs", ranker_cost_rows)]


def table() -> str:
    head = ["| benchmark | figure | ours | baseline | ratio | note |", "|---|---|---|---|---|---|"]
    rows, provenance = [], []
    for name, fmt in FORMATTERS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            rows.append(_row(name, "not run", None, None, None, ""))
            continue
        r = json.loads(path.read_text())
        m = r["machine"]
        provenance.append(f"- `{name}`: {r['date']}, {m['cpu']} × {m['cores']} cores, "
                          f"GPU {m.get('gpu') or 'none'}")
        if r.get("skipped") or r.get("error"):
            why = (r.get("skipped") or r.get("error")).replace("|", "/").splitlines()[0][:160]
            rows.append(_row(name, "skipped" if r.get("skipped") else "failed", None, None, None, why))
        elif fmt is None:
            rows.append(_row(name, "see results file", None, None, None, ""))
        else:
            rows += fmt(r)
    versions = json.loads(next(RESULTS.glob("*.json")).read_text())["versions"] if provenance else {}
    return "\n".join([*head, *rows, "", "Measured:", *provenance, "",
                      "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)])


def main() -> None:
    generated = f"{BEGIN}\n{table()}\n{END}"
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(before + generated + after)
    print(f"[bench] wrote {DOC}")


if __name__ == "__main__":
    main()
