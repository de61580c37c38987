"""What people see in a report: numbers with units and 3 significant digits, Pareto fronts, the
confusion matrix, and report.html rendered by a real headless browser with every image loaded."""

import base64
import re

import matplotlib.image
import numpy as np
import pytest
from browser_helpers import find_chromium, rendered_images
from test_report import record

from edgepack.benchmarks.plots import latency_limits, pareto_front, plot_confusion_matrix
from edgepack.benchmarks.report import write_report
from edgepack.benchmarks.results import append_result, format_ratio, format_time_ms, significant


@pytest.mark.parametrize("value, text", [(0.01082, "0.0108"), (1.2345, "1.23"), (45.67, "45.7"), (9.996, "10.0"),
                                         (12345.6, "12,300"), (-0.5, "-0.500"), (0.0, "0"), (7, "7"), (None, "–")])
def test_significant_digits(value, text):
    assert significant(value) == text


@pytest.mark.parametrize("ms, text", [(0.01082, "10.8 µs"), (0.99996, "1.00 ms"), (2.5, "2.50 ms"),
                                      (1234.0, "1.23 s"), (None, "–")])
def test_times_carry_their_unit(ms, text):
    assert format_time_ms(ms) == text


def test_ratio():
    assert format_ratio(1.9512) == "1.95×" and format_ratio(None) == "–"


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(1)
    points = [tuple(p) for p in rng.integers(0, 6, (25, 2)).astype(float)]
    for maximize in (True, False):
        sign = 1 if maximize else -1
        expected = {i for i, p in enumerate(points)
                    if not any(q[0] <= p[0] and sign * q[1] >= sign * p[1] and q != p for q in points)}
        front = pareto_front(points, maximize)
        assert set(front) == expected and [points[i][0] for i in front] == sorted(points[i][0] for i in front)
    # by hand: (1, 90) and (4, 95) are best for their size; (5, 93) and (2, 80) are beaten
    assert pareto_front([(1, 90), (5, 93), (4, 95), (2, 80)], maximize_y=True) == [0, 2]
    assert pareto_front([(1, 9.0), (5, 3.0), (4, 3.0), (2, 10.0)], maximize_y=False) == [0, 2]


def test_latency_axis_ends_at_the_p99s_not_at_an_outlier():
    fast = [0.010 + 0.001 * (i % 5) for i in range(200)]
    slow = [1.0 + 0.1 * (i % 7) for i in range(199)] + [2500.0]  # one 2.5 s hiccup
    low, high = latency_limits([fast, slow])
    assert low == pytest.approx(0.010 / 1.5)
    assert high == pytest.approx(1.5 * np.percentile(slow, 99)) and high < 2.5


def test_confusion_matrix_plot(tmp_path):
    labels = ["silence", "unknown", "yes"]
    path = plot_confusion_matrix([[5, 1, 0], [0, 7, 2], [1, 0, 9]], labels, tmp_path / "cm.png", "test split")
    assert path == tmp_path / "cm.png"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 0.05  # drawn, not blank
    with pytest.raises(ValueError, match="need a square 3×3 matrix"):
        plot_confusion_matrix([[1, 2], [3, 4]], labels, tmp_path / "bad.png")


def test_report_html_images_load_in_a_real_browser(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup-system.sh installs it)")
    results = tmp_path / "results.jsonl"
    for r in [record("dense", 2.0, 340.0, 0.97, 0.8), record("hashed", 0.01, 53.0, 0.95, 0.3)]:
        append_result(results, r)
    r = record("outlier", 0.5, 10.0, 0.9)
    r["latencies_ms"][0] = 1e3  # one slow run must not flatten the boxes (log axis, clipped at p99)
    append_result(results, r)
    paths = write_report(results, tmp_path / "report")
    assert rendered_images(chromium, paths["html"]) == (4, 4)
    # the check fails for an image the browser cannot decode
    page = paths["html"].read_text(encoding="utf-8")
    first = re.search(r"base64,([^\"]+)", page).group(1)
    broken = base64.b64encode(b"not a PNG" * 20).decode()
    paths["html"].write_text(page.replace(first, broken, 1), encoding="utf-8")
    assert rendered_images(chromium, paths["html"]) == (3, 4)
