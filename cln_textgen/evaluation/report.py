"""The files and the printed summary of an evaluation (:mod:`cln_textgen.evaluation.evaluate`)."""

import json
import math
import time

import numpy as np

from cln_textgen.errors import UserError
from cln_textgen.runs.folder import write_text_atomic

NGRAM = 8  # memorisation n-gram length, in units
SELF_BLEU_N = 4
FIGURES = (  # (key, name in tables and plots, format: "%" percent, ".3f", ".1f")
    ("label_accuracy", "label accuracy (classifier)", "%"),
    ("target_probability", "mean P(label) (classifier)", ".3f"),
    ("baseline_perplexity", "perplexity under the baseline", ".1f"),
    ("distinct_1", "Distinct-1", ".3f"),
    ("distinct_2", "Distinct-2", ".3f"),
    ("distinct_3", "Distinct-3", ".3f"),
    ("self_bleu_4", "Self-BLEU-4 (lower: more diverse)", ".3f"),
    ("exact_copy_rate", "exact copies of a training text", "%"),
    ("train_ngram_overlap", f"{NGRAM}-grams found in the training text", "%"),
    ("length_mean", "mean length (units)", ".1f"),
    ("length_median", "median length (units)", ".1f"),
)
PLOTTED = ("label_accuracy", "baseline_perplexity", "distinct_2", "self_bleu_4",
           "train_ngram_overlap", "length_mean")


def _fmt(value, kind=".3f"):
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if kind == "%" else format(value, kind)


# The figures of a sweep's table and printed summary, in this order.
SWEPT = ("label_accuracy", "target_probability", "baseline_perplexity", "distinct_2",
         "self_bleu_4", "train_ngram_overlap", "length_mean")


def write_reports(run, reports, samples):
    """``evaluation/<time>/``: for one setting its report (:func:`write_report`);
    for a sweep, sweep.json, sweep.md, tradeoff.png and each setting's report
    in ``setting-N/``.  ``reports``: ``(report, generated texts)`` pairs."""
    base = run.path / "evaluation" / time.strftime("%Y%m%d-%H%M%S")
    out, k = base, 1
    while out.exists():  # two evaluations within one second
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    try:
        if len(reports) == 1:
            write_report(out, *reports[0], samples)
            return out
        for k, (report, generated) in enumerate(reports, 1):
            write_report(out / f"setting-{k}", report, generated, samples)
        summary = [report for report, _ in reports]
        write_text_atomic(out / "sweep.json", json.dumps(
            [{"setting": k, "generation": r["settings"]["generation"], "macro": r["macro"]}
             for k, r in enumerate(summary, 1)], ensure_ascii=False, indent=2) + "\n")
        write_text_atomic(out / "sweep.md", _sweep_markdown(summary))
        _plot_tradeoff(summary, out / "tradeoff.png")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report ({e.strerror})") from None
    return out


def write_report(out, report, generated, samples):
    """``out/``: report.json, report.md, report.png, generations.jsonl."""
    out.mkdir(parents=True)
    write_text_atomic(out / "report.json",
                      json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(out / "generations.jsonl", "".join(
        json.dumps({"label": label, "text": t}, ensure_ascii=False) + "\n"
        for label, texts in generated.items() for t in texts))
    write_text_atomic(out / "report.md", _markdown(report, generated, samples))
    _plot(report, out / "report.png")


def varied(reports):
    """Names of the generation options whose value differs between ``reports``."""
    first = reports[0]["settings"]["generation"]
    return [name for name in first
            if any(r["settings"]["generation"][name] != first[name] for r in reports)]


def setting_name(report, names):
    """``guidance=2 temperature=0.7``: a setting by the options a sweep varies."""
    g = report["settings"]["generation"]
    return " ".join(f"{name}={g[name]:g}" if isinstance(g[name], float) else f"{name}={g[name]}"
                    for name in names)


def _sweep_rows(reports):
    """``(name, figures)`` per setting, then real text (macro averages)."""
    names = varied(reports)
    return ([(setting_name(r, names), r["macro"]["generated"]) for r in reports]
            + [("real text", reports[0]["macro"]["real"])])


def _sweep_markdown(reports):
    kinds = {key: (name, kind) for key, name, kind in FIGURES}
    keys = [k for k in SWEPT if reports[0]["macro"]["generated"].get(k) is not None]
    first = reports[0]
    lines = [f"# Sweep of {first['run']}", "",
             f"- checkpoint: `{first['checkpoint']}`, {first['created']}",
             f"- {first['settings']['n_per_label']} texts per label per setting; the other "
             "options as in `setting-1/report.md`; macro averages over the labels",
             f"- classifier accuracy on its test split: "
             f"{_fmt(first['classifier']['test_accuracy'], '%')}", "",
             "| setting | " + " | ".join(kinds[k][0] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, figures in _sweep_rows(reports):
        lines.append(f"| {name} | " + " | ".join(_fmt(figures.get(k), kinds[k][1]) for k in keys)
                     + " |")
    lines += ["", "![trade-off](tradeoff.png)", ""]
    return "\n".join(lines)


def sweep_lines(reports):
    """The printed summary of a sweep: one line per setting, then real text."""
    kinds = {key: kind for key, _, kind in FIGURES}
    shown = [("label_accuracy", "label acc"), ("baseline_perplexity", "ppl (baseline)"),
             ("distinct_2", "Distinct-2"), ("self_bleu_4", "Self-BLEU-4")]
    shown = [(k, t) for k, t in shown if reports[0]["macro"]["generated"].get(k) is not None]
    table = [["setting"] + [t for _, t in shown]]
    for name, figures in _sweep_rows(reports):
        table.append([name] + [_fmt(figures.get(k), kinds[k]) for k, _ in shown])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def _plot_tradeoff(reports, path):
    """Label accuracy against Distinct-2 and against Self-BLEU-4, one point per
    setting and one for real text: which setting buys control without collapse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _sweep_rows(reports)
    panels = (("distinct_2", "Distinct-2 (higher: more varied)"),
              ("self_bleu_4", "Self-BLEU-4 (lower: more varied)"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    for ax, (key, title) in zip(axes, panels):
        for name, figures in rows:
            x, y = figures.get(key), figures.get("label_accuracy")
            if x is None or y is None:
                continue
            real = name == "real text"
            ax.scatter(x, 100 * y, marker="*" if real else "o", s=160 if real else 40,
                       color="0.3" if real else "tab:blue", zorder=3)
            ax.annotate(name, (x, 100 * y), xytext=(4, 4), textcoords="offset points",
                        fontsize=7)
        ax.set_xlabel(title, fontsize=9)
        ax.set_ylabel("label accuracy (classifier), %", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{reports[0]['run']}: label control against diversity "
                 "(star: real text)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _figure_table(columns):
    """Markdown rows: one per figure, one column per (heading, figures dict)."""
    lines = ["| figure | " + " | ".join(h for h, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for key, name, kind in FIGURES:
        if all(figures.get(key) is None for _, figures in columns):
            continue  # e.g. no baseline given
        lines.append(f"| {name} | " + " | ".join(_fmt(f.get(key), kind) for _, f in columns)
                     + " |")
    return lines


def _markdown(report, generated, samples):
    s, c = report["settings"], report["classifier"]
    g = s["generation"]
    lines = [f"# Evaluation of {report['run']}", "",
             f"- checkpoint: `{report['checkpoint']}`, {report['created']}",
             f"- {s['n_per_label']} generated texts per label (seed {s['seed']}; temperature "
             f"{g['temperature']}, top-k {g['top_k']}, top-p {g['top_p']}, max "
             f"{g['max_new_tokens']} new tokens), real texts from the {s['real_split']} split "
             f"(`{s['real_file']}`)",
             f"- classifier `{c['dir']}`: {_fmt(c['test_accuracy'], '%')} accuracy "
             f"({_fmt(c['test_macro_accuracy'], '%')} macro) on its test split: how far "
             "its verdict can be trusted",
             f"- baseline run: `{s['baseline_run']}`" if s["baseline_run"] else
             "- no baseline run given (--baseline-run): perplexity figures left out",
             f"- units: {s['units']}", ""]
    lines += ["## All labels (macro average)", ""]
    lines += _figure_table([("generated", report["macro"]["generated"]),
                            ("real", report["macro"]["real"])])
    for label, groups in report["labels"].items():
        lines += ["", f"## Label {label}", ""]
        lines += _figure_table([(f"generated ({groups['generated']['count']})",
                                 groups["generated"]),
                                (f"real ({groups['real']['count']})", groups["real"])])
    lines += ["", "## Perplexity on real text", "",
              "Lower is better; the conditional run below the baseline means the label "
              "helps predict the text.", "",
              "| split | label | run | baseline |", "|---|---|---|---|"]
    ppl = report["perplexity"]
    for split, per_label in ppl["run"].items():
        for label, value in per_label.items():
            base = ppl["baseline"][split][label] if ppl["baseline"] else None
            lines.append(f"| {split} | {label} | {_fmt(value, '.1f')} | {_fmt(base, '.1f')} |")
    if samples:
        lines += ["", "## Samples", ""]
        for label, texts in generated.items():
            lines += [f"**{label}**", ""] + [f"- {t}" for t in texts[:samples]] + [""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {key: name for key, name, _ in FIGURES}
    keys = [k for k in PLOTTED if report["macro"]["generated"].get(k) is not None]
    labels = list(report["labels"])
    columns = 3
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(10, 3.2 * rows), dpi=110, squeeze=False)
    x = np.arange(len(labels))
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        for offset, group, color in ((-0.2, "real", "0.6"), (0.2, "generated", "tab:blue")):
            values = [report["labels"][label][group].get(key) for label in labels]
            ax.bar(x + offset, [np.nan if v is None else v for v in values], 0.4,
                   label=group, color=color)
        ax.set_xticks(x, labels)
        ax.set_title(names[key].split(" (")[0], fontsize=9)
        ax.set_ylim(bottom=0)  # every figure is >= 0; an all-zero panel stays readable
        ax.grid(axis="y", alpha=0.3)
    handles, names_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="upper right", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{report['run']}: generated vs real text, per label", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path)
    plt.close(fig)


def summary_lines(report):
    """The printed summary: a table of the main figures, ``generated (real)`` per
    label and macro-averaged, then the perplexity of real text."""
    shown = [("label_accuracy", "label accuracy"), ("baseline_perplexity", "ppl (baseline)"),
             ("distinct_2", "Distinct-2"), ("self_bleu_4", "Self-BLEU-4"),
             ("exact_copy_rate", "exact copies"), ("train_ngram_overlap", f"{NGRAM}-gram overlap"),
             ("length_mean", "mean length")]
    kinds = {key: kind for key, _, kind in FIGURES}
    columns = {label: groups for label, groups in report["labels"].items()}
    columns["macro"] = report["macro"]
    table = [["generated (real)"] + list(columns)]
    for key, title in shown:
        if report["macro"]["generated"].get(key) is not None:
            table.append([title] + [f"{_fmt(c['generated'].get(key), kinds[key])} "
                                    f"({_fmt(c['real'].get(key), kinds[key])})"
                                    for c in columns.values()])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    c = report["classifier"]
    lines.append(f"classifier accuracy on its test split: {_fmt(c['test_accuracy'], '%')}")
    ppl = report["perplexity"]
    for split, per_label in ppl["run"].items():
        base = ppl["baseline"][split]["all"] if ppl["baseline"] else None
        lines.append(f"{split} perplexity: run {_fmt(per_label['all'], '.1f')}"
                     + (f", baseline {_fmt(base, '.1f')}" if base is not None else ""))
    if not ppl["baseline"]:
        lines.append("no --baseline-run: perplexity under an unconditional baseline left out")
    lines += [f"note: {note}" for note in report["notes"]]
    return lines
