//! The loss curve of a run as a PNG (plotters draws the chart; labels use the bitmap font of
//! `storygpt-data`, so no system fonts are needed) and as CSV.

use std::path::Path;

use image::RgbImage;
use plotters::prelude::*;
use storygpt_core::{Error, Result};
use storygpt_data::draw::{draw_text, save_png};

use super::checkpoint::{LossPoint, ValPoint};

const W: u32 = 720;
const H: u32 = 400;
const LEFT: u32 = 70;
const BOTTOM: u32 = 30;
const TOP: u32 = 30;

/// Exponential smoothing of a series (as TensorBoard's, weight 0.9).
fn smooth(values: &[f64], w: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut last = values.first().copied().unwrap_or(0.0);
    for &v in values {
        last = w * last + (1.0 - w) * v;
        out.push(last);
    }
    out
}

/// Draws the raw loss (light) and its smoothing (dark) against the step, with the min / max
/// and the last smoothed value written on the chart.
pub fn loss_curve(title: &str, losses: &[LossPoint]) -> Result<RgbImage> {
    let mut buf = vec![255u8; (W * H * 3) as usize];
    let steps: Vec<f64> = losses.iter().map(|p| p.step as f64).collect();
    let values: Vec<f64> = losses.iter().map(|p| p.loss).collect();
    let smoothed = smooth(&values, 0.9);
    let (x0, x1) = (
        steps.first().copied().unwrap_or(0.0),
        steps
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(steps.first().copied().unwrap_or(0.0) + 1.0),
    );
    // y range: robust to the first spiky steps (2nd–98th percentile of the raw values).
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |f: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * f) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let (mut y0, mut y1) = (
        q(0.0).min(q(0.02)),
        q(0.98).max(smoothed.iter().cloned().fold(f64::MIN, f64::max)),
    );
    if y1.partial_cmp(&y0) != Some(std::cmp::Ordering::Greater) {
        y1 = y0 + 1.0;
    }
    let pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        let area = root.margin(TOP, BOTTOM, LEFT, 10);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| Error::InvalidInput(format!("plotting failed: {e}")))?;
        // Light horizontal grid lines at quarters of the range (no text: labels are drawn
        // with the bitmap font below).
        for k in 0..=4 {
            let y = y0 + (y1 - y0) * f64::from(k) / 4.0;
            chart
                .draw_series(LineSeries::new([(x0, y), (x1, y)], RGBColor(225, 225, 225)))
                .map_err(|e| Error::InvalidInput(format!("plotting failed: {e}")))?;
        }
        chart
            .draw_series(LineSeries::new(
                steps.iter().copied().zip(values.iter().copied()),
                RGBColor(170, 200, 235),
            ))
            .map_err(|e| Error::InvalidInput(format!("plotting failed: {e}")))?;
        chart
            .draw_series(LineSeries::new(
                steps.iter().copied().zip(smoothed.iter().copied()),
                RGBColor(20, 80, 170).stroke_width(2),
            ))
            .map_err(|e| Error::InvalidInput(format!("plotting failed: {e}")))?;
        root.present()
            .map_err(|e| Error::InvalidInput(format!("plotting failed: {e}")))?;
    }
    let mut img = RgbImage::from_raw(W, H, buf)
        .ok_or_else(|| Error::InvalidInput("plot buffer has the wrong size".into()))?;
    let dark = [30, 30, 30];
    draw_text(&mut img, 8, 8, title, dark, 1);
    // y-axis labels at the top and bottom of the plotting area, x-axis range below.
    draw_text(&mut img, 4, TOP as i64, &format!("{y1:.4}"), dark, 1);
    draw_text(
        &mut img,
        4,
        (H - BOTTOM - 8) as i64,
        &format!("{y0:.4}"),
        dark,
        1,
    );
    draw_text(
        &mut img,
        LEFT as i64,
        (H - BOTTOM + 10) as i64,
        &format!("step {x0:.0}"),
        dark,
        1,
    );
    let right = format!("step {x1:.0}");
    draw_text(
        &mut img,
        (W as i64) - 10 - 8 * right.len() as i64,
        (H - BOTTOM + 10) as i64,
        &right,
        dark,
        1,
    );
    if let Some(last) = smoothed.last() {
        let msg = format!("smoothed loss {last:.5} (raw: light, smoothed: dark)");
        draw_text(&mut img, LEFT as i64 + 10, 8 + 12, &msg, [20, 80, 170], 1);
    }
    Ok(img)
}

/// Writes `losses.csv` and `loss_curve.png` (and `validation.csv` if any) into `run`.
pub fn write_curves(
    run: &Path,
    title: &str,
    losses: &[LossPoint],
    validations: &[ValPoint],
) -> Result<()> {
    // the stage's loss terms as extra columns (every key any step logged, sorted)
    let terms: std::collections::BTreeSet<&String> =
        losses.iter().flat_map(|p| p.terms.keys()).collect();
    let mut csv = String::from("step,loss,lr,grad_norm");
    for k in &terms {
        csv += &format!(",{k}");
    }
    csv += "\n";
    for p in losses {
        csv += &format!("{},{},{},{}", p.step, p.loss, p.lr, p.grad_norm);
        for k in &terms {
            csv += ",";
            if let Some(v) = p.terms.get(*k) {
                csv += &v.to_string();
            }
        }
        csv += "\n";
    }
    storygpt_core::fs::write_atomic(run.join("losses.csv"), csv.as_bytes())?;
    if !validations.is_empty() {
        let keys: Vec<&String> = validations[0].metrics.keys().collect();
        let mut v = format!(
            "step,{}\n",
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        for p in validations {
            let row: Vec<String> = keys
                .iter()
                .map(|k| p.metrics.get(*k).map_or(String::new(), |x| x.to_string()))
                .collect();
            v += &format!("{},{}\n", p.step, row.join(","));
        }
        storygpt_core::fs::write_atomic(run.join("validation.csv"), v.as_bytes())?;
    }
    if losses.len() >= 2 {
        save_png(&run.join("loss_curve.png"), &loss_curve(title, losses)?)?;
    }
    Ok(())
}
