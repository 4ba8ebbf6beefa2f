"""metrics.json, metrics.csv and report.html of `trilora evaluate`.

report.html is one self-contained file: the plot and the image grids are embedded as base64 data,
so it can be mailed or archived alone.
"""

import base64
import csv
import html
import io
from pathlib import Path

from PIL import Image

from trilora.files import write_json, write_text
from trilora.plotting import pyplot

CSV_COLUMNS = ("label", "adapter", "strength", "images", "fid", "nfid", "kid", "kid_std", "clip_score",
               "clip_score_std", "recommended")  # fmt: skip
THUMBNAIL = 192  # pixels, the longer side of each image in the grids


def write_outputs(output: Path, results: dict, grids: dict) -> None:
    """`grids`: adapter label -> {"columns": [titles], "rows": [(prompt, [PIL images, one per column])]}."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, CSV_COLUMNS)
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({k: row.get(k) for k in CSV_COLUMNS} | {"recommended": is_recommended(row, results)})
    page = render_html(results, grids, plot_png(results))  # everything is drawn before anything is written
    write_json(output / "metrics.json", results)
    write_text(output / "metrics.csv", buffer.getvalue())
    write_text(output / "report.html", page)


def is_recommended(row: dict, results: dict) -> bool:
    return row["adapter"] is not None and results["recommended"].get(row["label"]) == row["strength"]


def data_uri(image: Image.Image, kind: str = "JPEG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, kind, quality=90) if kind == "JPEG" else image.save(buffer, kind)
    return f"data:image/{kind.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def thumbnail(image: Image.Image) -> Image.Image:
    """At most THUMBNAIL pixels on the longer side; small images are enlarged without blurring."""
    scale = THUMBNAIL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    return image.convert("RGB").resize(size, resample)


def curves(results: dict) -> dict[str, list[tuple[float, float, float]]]:
    """Adapter label -> (strength, FID, CLIP score) from strength 0 (the base model) upwards."""
    base = results["rows"][0]
    by_label = {}
    for row in results["rows"][1:]:
        by_label.setdefault(row["label"], [(0.0, base["fid"], base["clip_score"])])
        by_label[row["label"]].append((row["strength"], row["fid"], row["clip_score"]))
    return by_label


def plot_png(results: dict) -> Image.Image:
    """CLIP score against FID, one line per adapter through its strengths, the recommended ones ringed."""
    plt = pyplot()
    base = results["rows"][0]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=100)
    ax.scatter(
        [base["fid"]], [base["clip_score"]], marker="*", s=220, color="black", zorder=3, label="base model"
    )
    for index, (label, points) in enumerate(curves(results).items()):
        strengths, fids, clips = zip(*points, strict=True)
        (line,) = ax.plot(fids, clips, marker="o", label=label)
        for strength, x, y in points[1:]:
            ax.annotate(f"{strength:g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        chosen = results["recommended"].get(label)
        if chosen is not None:
            x, y = next((f, c) for s, f, c in points if s == chosen)
            ax.scatter(
                [x], [y], s=380, facecolors="none", edgecolors=line.get_color(), linewidths=2, zorder=4
            )
            ax.annotate(f"{label}: recommended {chosen:g}", (x, y), textcoords="offset points",
                        xytext=(10, -16 - 13 * index), fontsize=9, color=line.get_color(), fontweight="bold")  # fmt: skip
    ax.set_xlabel("FID against the reference images (lower: closer)")
    ax.set_ylabel("CLIP score (higher: follows the prompt)")
    ax.set_title("Strength sweep: CLIP score against FID")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _number(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.recommended { background: #e8f5e9; font-weight: 600; }
.tag { background: #2e7d32; color: white; border-radius: 3px; padding: 1px 5px; font-size: 0.8em; }
.grid th { text-align: center; }
.grid td { text-align: center; vertical-align: top; border: none; padding: 2px; }
.grid td.prompt { text-align: left; max-width: 220px; font-size: 0.85em; vertical-align: middle; }
.grid img { display: block; image-rendering: auto; }
.note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def render_html(results: dict, grids: dict, plot: Image.Image) -> str:
    esc = html.escape
    protocol = results["protocol"]
    metrics = results["metrics"]
    rows_html = []
    for row in results["rows"]:
        recommended = is_recommended(row, results)
        tag = ' <span class="tag">recommended</span>' if recommended else ""
        rows_html.append(
            f'<tr class="{"recommended" if recommended else ""}"><td>{esc(row["label"])}{tag}</td>'
            f"<td>{row['strength']:g}</td><td>{row['images']}</td><td>{_number(row['fid'], 2)}</td>"
            f"<td>{_number(row['nfid'], 3)}</td><td>{row['kid']:.4f} ± {row['kid_std']:.4f}</td>"
            f"<td>{row['clip_score']:.2f} ± {row['clip_score_std']:.2f}</td></tr>"
        )
    grid_html = []
    for label, grid in grids.items():
        header = "".join(f"<th>{esc(title)}</th>" for title in ["prompt", *grid["columns"]])
        body = "".join(
            f'<tr><td class="prompt">{esc(prompt)}</td>'
            + "".join(
                f'<td><img src="{data_uri(thumbnail(image))}" alt="{esc(prompt)}"></td>' for image in images
            )
            + "</tr>"
            for prompt, images in grid["rows"]
        )
        grid_html.append(f'<h3>{esc(label)}</h3><table class="grid"><tr>{header}</tr>{body}</table>')
    recommended = "".join(
        f"<li><b>{esc(label)}</b>: strength {strength:g}"
        + (" (the base model: no strength improved FID within the tolerance)" if strength == 0 else "")
        + "</li>"
        for label, strength in results["recommended"].items()
    )
    training = ""
    if results.get("training"):
        cells = "".join(
            f"<tr><td>{esc(method)}</td><td>{t['rank']}</td><td>{t['alpha']:g}</td><td>{t['steps_run']}</td>"
            f"<td>{t['best_step'] if t['best_step'] is not None else '–'}</td><td>{_number(t['best_val_loss'], 4)}</td></tr>"
            for method, t in results["training"].items()
        )
        training = (
            "<h2>Training</h2><p>Each method trained with the same settings and seed (<code>trilora compare</code>).</p>"
            "<table><tr><th>method</th><th>rank</th><th>alpha</th><th>steps run</th><th>best step</th>"
            f"<th>best validation loss</th></tr>{cells}</table>"
        )
    size = "the base model's" if protocol["height"] is None else f"{protocol['width']}x{protocol['height']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trilora evaluate: {esc(Path(results["base"]).name)}</title>
<style>{STYLE}</style></head><body>
<h1>Adapter evaluation</h1>
<p>Base model <code>{esc(results["base"])}</code>; {results["rows"][0]["images"]} images per row, from
{results["prompts"]} prompts ({results["distinct_prompts"]} distinct) × {protocol["num_images"]} image(s) each; reference: {results["reference"]["images"]} images in <code>{esc(results["reference"]["folder"])}</code>.
Seed {protocol["seed"]} (image <i>k</i> of a prompt: seed + <i>k</i>), {protocol["steps"]} steps, guidance
{protocol["guidance"]:g}, size {size}, scheduler {esc(protocol["scheduler"] or "the base model's")},
{esc(results["device"])} in {esc(results["dtype"])}.</p>
<h2>Metrics</h2>
<table><tr><th>model</th><th>strength</th><th>images</th><th>FID ↓</th><th>NFID ↓</th><th>KID ↓ (± sd)</th>
<th>CLIP score ↑ (± sd)</th></tr>{"".join(rows_html)}</table>
<p class="note">FID and KID: Inception-v3 pool features against the reference images; NFID = FID / FID(base model).
KID: unbiased MMD² with the cubic polynomial kernel, mean ± standard deviation over {metrics["kid_subsets"]} subsets
of {metrics["kid_subset_size"]} images. CLIP score: 100 × cosine of image and prompt embeddings, floored at 0,
averaged (± standard deviation over images). FID is biased upwards on small sets; compare rows with the same
number of images, and prefer KID below a few hundred images.</p>
<h2>CLIP score against FID</h2>
<img src="{data_uri(plot, "PNG")}" alt="CLIP score against FID across strengths">
<p>Recommended strength: the lowest FID among the strengths whose CLIP score is within
{metrics["clip_tolerance"]:g} CLIP-score point(s) of the adapter's best.</p><ul>{recommended}</ul>
<h2>Images</h2>
<p class="note">Image 0 of the first {max((len(g["rows"]) for g in grids.values()), default=0)} prompts;
base model first, then each strength.</p>
{"".join(grid_html)}
{training}
</body></html>
"""
