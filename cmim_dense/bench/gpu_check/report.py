"""``gpu_check.json`` and ``gpu_check.md``: every figure, and one table."""

from __future__ import annotations

import os
from pathlib import Path

from cmim_dense.bench.gpu_check.common import JSON_NAME, MD_NAME, STAGES
from cmim_dense.utils.io import write_json_atomic, write_text_atomic


def _fmt_num(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_mib(value) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _batch_note(run: dict) -> str:
    if run.get("halved"):
        return f"batch {run['batch']} (halved from {run['requested_batch']} to fit)"
    return f"batch {run['batch']}"


def _pretrain_rows(p: dict) -> list[tuple[str, str, str]]:
    rows = []
    for run in p.get("runs", []):
        kept = p.get("amp", {}).get(run["dtype"], {}).get("memory_format") == run["memory_format"]
        rows.append(
            (
                "pretrain",
                f"{run['dtype']}, {run['memory_format']}{' (kept)' if kept else ''}, "
                f"{_batch_note(run)}, {p['size']}x{p['size']}",
                f"{run['images_per_s']:,.0f} img/s, peak {_fmt_mib(run['peak_memory_mib'])}",
            )
        )
    for dtype, amp in p.get("amp", {}).items():
        rows.append(
            (
                "pretrain",
                f"{dtype}, CMIM step / plain step, batch {amp['ratio_batch']}",
                f"{amp['cmim_step_ratio']:.3f} ({amp['cmim_step_ms']:.1f} / "
                f"{amp['plain_step_ms']:.1f} ms)",
            )
        )
    for dtype, why in p.get("skipped", {}).items():
        rows.append(("pretrain", dtype, f"skipped: {why}"))
    if "nonfinite_losses" in p:
        rows.append(("pretrain", "non-finite losses", str(p["nonfinite_losses"])))
    return rows


def _transfer_rows(t: dict) -> list[tuple[str, str, str]]:
    size = f"{t['height']}x{t['width']}, output stride {t['output_stride']}"
    frozen = "frozen backbone" if t["freeze_backbone"] else "fine-tuned backbone"
    rows = [
        (
            "transfer",
            f"{t['dtype']}, {_batch_note(t)}, {size}, {frozen}",
            f"{t['images_per_s']:,.1f} img/s, peak {_fmt_mib(t['peak_memory_mib'])}",
        ),
        (
            "transfer",
            f"frozen step / fine-tune step, batch {t['ratio_batch']}",
            f"{t['frozen_finetune_ratio']:.3f} ({t['frozen_step_ms']:.1f} / "
            f"{t['finetune_step_ms']:.1f} ms)",
        ),
    ]
    if t.get("max_iters"):
        rows.append(
            (
                "transfer",
                f"full {t['max_iters']:,}-iteration run at batch {t['batch']}",
                f"{t['full_run_h']:.2f} h",
            )
        )
    rows.append(("transfer", "non-finite losses", str(t["nonfinite_losses"])))
    return rows


def _nccl_rows(n: dict) -> list[tuple[str, str, str]]:
    if n["passed"]:
        result = "passed"
    elif n["timed_out"]:
        result = "FAILED: timed out"
    else:
        result = f"FAILED: exit code {n['returncode']}"
    return [
        (
            "nccl",
            f"tools/dist_train.sh, 1 process, {n['backend']}, batch {n['batch']} (world size 1: "
            "SyncBN and the CMIM all_gather run no collective)",
            f"{result}, {n['iterations']}/{n['expected_iterations']} iterations in "
            f"{n['seconds']:.0f} s",
        )
    ]


def _agreement_rows(a: dict) -> list[tuple[str, str, str]]:
    where = f"fp32, batch {a['batch']} at {a['size']}x{a['size']}, CPU vs {a['device']}"
    return [
        (
            "agreement",
            f"binary conv outputs, same input ({where})",
            f"{a['same_input_equal']}/{a['layers']} exactly equal" + _mismatch_note(a),
        ),
        (
            "agreement",
            "binary conv outputs, full forward",
            f"{a['full_forward_equal']}/{a['layers']} exactly equal, {a['sign_flips']} sign "
            f"flips in {a['binary_inputs']:,} binary inputs",
        ),
        (
            "agreement",
            f"CMIM loss (within {a['rtol']:g} relative)",
            f"CPU {_fmt_num(a['loss_cmim_cpu'], '.6f')}, "
            f"{a['device']} {_fmt_num(a['loss_cmim_device'], '.6f')}, "
            f"rel diff {_fmt_num(a['loss_cmim_rel_diff'], '.2e')}: "
            f"{'passed' if a['passed'] else 'FAILED'}",
        ),
    ]


def _mismatch_note(a: dict) -> str:
    if a["same_input_equal"] == a["layers"]:
        return ""
    note = f" (max abs diff {a['same_input_max_abs_diff']:.3g}"
    if a.get("same_input_equal_without_cudnn") is not None:
        note += f"; {a['same_input_equal_without_cudnn']}/{a['layers']} equal without cuDNN"
    return note + f"; binary weights {a['binary_weights_equal']}/{a['layers']} equal)"


_ROWS = dict(
    pretrain=_pretrain_rows, transfer=_transfer_rows, nccl=_nccl_rows, agreement=_agreement_rows
)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(figures: dict) -> str:
    """``gpu_check.md``: the environment, then one "stage | setting | figure" table."""
    env = figures.get("environment", {})
    passed = figures.get("passed")
    lines = [
        "# GPU check",
        "",
        f"- GPU: {env.get('gpu') or 'n/a'}"
        + (f" ({env['gpu_memory_mib']:,.0f} MiB)" if env.get("gpu_memory_mib") else ""),
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"NCCL {env.get('nccl')}",
        f"- started {env.get('started')}, took {_fmt_num(figures.get('seconds'), '.0f')} s",
        "- result: "
        + ("all checks passed" if passed else "FAILED")
        + "".join(f"; {k} {'ok' if v else 'FAILED'}" for k, v in figures.get("checks", {}).items()),
        "",
        "| stage | setting | figure |",
        "| --- | --- | --- |",
    ]
    details = []
    for stage in STAGES:
        data = figures.get(stage)
        if data is None:
            continue
        rows = [(stage, "error", data["error"])] if "error" in data else _ROWS[stage](data)
        if "seconds" in data:
            rows.append((stage, "stage time", f"{data['seconds']:.0f} s"))
        lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in rows]
        if data.get("output_tail"):
            details += ["", f"## {stage}: end of the output", "", "```", data["output_tail"], "```"]
    lines += details
    return "\n".join(lines) + "\n"


def write_report(figures: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<out_dir>/gpu_check.json`` (every figure) and ``<out_dir>/gpu_check.md``
    atomically; returns their paths."""
    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / JSON_NAME, figures)
    md_path = write_text_atomic(out_dir / MD_NAME, render_markdown(figures))
    return json_path, md_path
