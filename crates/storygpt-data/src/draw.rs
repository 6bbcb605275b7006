//! A small raster canvas that paints colour and a label map in one pass, so segmentation masks
//! are exact by construction; plus 8×8 bitmap text for contact sheets and storyboards.
//!
//! Shapes are filled by testing pixel centres against the exact shape (no anti-aliasing), which
//! keeps every pixel's colour consistent with its label.

use image::RgbImage;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// An RGB image plus a per-pixel label (0 = background).
#[derive(Debug, Clone)]
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `H * W * 3` bytes.
    pub rgb: Vec<u8>,
    /// `H * W` labels.
    pub labels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `color`, all labels 0.
    pub fn new(width: usize, height: usize, color: Rgb) -> Self {
        let mut rgb = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            rgb.extend_from_slice(&color);
        }
        Self {
            width,
            height,
            rgb,
            labels: vec![0; width * height],
        }
    }

    /// Paints pixel `(x, y)` if it is inside the canvas. `label` replaces the pixel's label
    /// when it is `Some`.
    #[inline]
    pub fn put(&mut self, x: i64, y: i64, color: Rgb, label: Option<u8>) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = y as usize * self.width + x as usize;
        self.rgb[3 * i..3 * i + 3].copy_from_slice(&color);
        if let Some(l) = label {
            self.labels[i] = l;
        }
    }

    /// Fills every pixel whose centre satisfies `inside`, within the box `[x0, x1) × [y0, y1)`
    /// (in pixels, clipped to the canvas).
    pub fn fill(
        &mut self,
        bounds: [f32; 4],
        color: Rgb,
        label: Option<u8>,
        inside: impl Fn(f32, f32) -> bool,
    ) {
        let x0 = bounds[0].floor().max(0.0) as i64;
        let y0 = bounds[1].floor().max(0.0) as i64;
        let x1 = (bounds[2].ceil() as i64).min(self.width as i64);
        let y1 = (bounds[3].ceil() as i64).min(self.height as i64);
        for y in y0..y1 {
            for x in x0..x1 {
                if inside(x as f32 + 0.5, y as f32 + 0.5) {
                    self.put(x, y, color, label);
                }
            }
        }
    }

    /// A filled axis-aligned rectangle `[x0, y0, x1, y1]`.
    pub fn rect(&mut self, r: [f32; 4], color: Rgb, label: Option<u8>) {
        self.fill(r, color, label, |x, y| {
            x >= r[0] && x < r[2] && y >= r[1] && y < r[3]
        });
    }

    /// A filled ellipse with centre `(cx, cy)` and radii `(rx, ry)`.
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, color: Rgb, label: Option<u8>) {
        if rx <= 0.0 || ry <= 0.0 {
            return;
        }
        self.fill(
            [cx - rx, cy - ry, cx + rx, cy + ry],
            color,
            label,
            |x, y| {
                let dx = (x - cx) / rx;
                let dy = (y - cy) / ry;
                dx * dx + dy * dy <= 1.0
            },
        );
    }

    /// A filled convex or concave polygon (even-odd rule).
    pub fn polygon(&mut self, pts: &[(f32, f32)], color: Rgb, label: Option<u8>) {
        if pts.len() < 3 {
            return;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in pts {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        self.fill([x0, y0, x1, y1], color, label, |x, y| {
            point_in_polygon(pts, x, y)
        });
    }

    /// A thick line segment (a capsule of half-width `r`).
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), r: f32, color: Rgb, label: Option<u8>) {
        let bounds = [
            a.0.min(b.0) - r,
            a.1.min(b.1) - r,
            a.0.max(b.0) + r,
            a.1.max(b.1) + r,
        ];
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        self.fill(bounds, color, label, |x, y| {
            let t = (((x - a.0) * dx + (y - a.1) * dy) / len2).clamp(0.0, 1.0);
            let (px, py) = (a.0 + t * dx - x, a.1 + t * dy - y);
            px * px + py * py <= r * r
        });
    }

    /// The image as an `image::RgbImage`.
    pub fn to_image(&self) -> RgbImage {
        RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone())
            .expect("buffer matches the size")
    }
}

fn point_in_polygon(pts: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Draws `text` with the 8×8 bitmap font at `(x, y)`, `scale` pixels per font pixel. Returns
/// the x after the last glyph. Characters outside Basic Latin are drawn as `?`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, color: Rgb, scale: u32) -> i64 {
    use font8x8::UnicodeFonts;
    let s = i64::from(scale.max(1));
    let mut cx = x;
    for ch in text.chars() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    for dy in 0..s {
                        for dx in 0..s {
                            let px = cx + col * s + dx;
                            let py = y + row as i64 * s + dy;
                            if px >= 0
                                && py >= 0
                                && (px as u32) < img.width()
                                && (py as u32) < img.height()
                            {
                                img.put_pixel(px as u32, py as u32, image::Rgb(color));
                            }
                        }
                    }
                }
            }
        }
        cx += 8 * s;
    }
    cx
}

/// Splits `text` into lines of at most `width` characters, breaking at spaces.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let extra = if line.is_empty() { 0 } else { 1 };
        if !line.is_empty() && line.chars().count() + extra + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > width {
            let head: String = line.chars().take(width).collect();
            let tail: String = line.chars().skip(width).collect();
            lines.push(head);
            line = tail;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Lays `tiles` out in a grid of `cols` columns, each tile with up to `caption_lines` lines of
/// its caption underneath (8-px font), on a white sheet with `pad` pixels between tiles.
pub fn contact_sheet(
    tiles: &[(RgbImage, String)],
    cols: usize,
    caption_lines: usize,
    pad: u32,
) -> RgbImage {
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let tw = tiles.iter().map(|t| t.0.width()).max().unwrap_or(64);
    let th = tiles.iter().map(|t| t.0.height()).max().unwrap_or(64);
    let text_h = 9 * caption_lines as u32;
    let cell_w = tw + pad;
    let cell_h = th + text_h + pad;
    let mut sheet = RgbImage::from_pixel(
        cols as u32 * cell_w + pad,
        rows as u32 * cell_h + pad,
        image::Rgb([255, 255, 255]),
    );
    let chars_per_line = (tw / 8) as usize;
    for (i, (img, caption)) in tiles.iter().enumerate() {
        let x = pad + (i % cols) as u32 * cell_w;
        let y = pad + (i / cols) as u32 * cell_h;
        image::imageops::replace(&mut sheet, img, i64::from(x), i64::from(y));
        for (l, line) in wrap(caption, chars_per_line)
            .iter()
            .take(caption_lines)
            .enumerate()
        {
            draw_text(
                &mut sheet,
                i64::from(x),
                i64::from(y + th + 1 + 9 * l as u32),
                line,
                [20, 20, 20],
                1,
            );
        }
    }
    sheet
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &std::path::Path, img: &RgbImage) -> storygpt_core::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| {
        storygpt_core::Error::InvalidInput(format!(
            "PNG encoding of {} failed: {e}",
            path.display()
        ))
    })?;
    storygpt_core::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_colour_exactly() {
        let mut c = Canvas::new(16, 16, [0, 0, 0]);
        c.ellipse(8.0, 8.0, 5.0, 3.0, [255, 0, 0], Some(1));
        c.rect([0.0, 0.0, 4.0, 4.0], [0, 255, 0], Some(2));
        for i in 0..256 {
            let px = &c.rgb[3 * i..3 * i + 3];
            match c.labels[i] {
                0 => assert_eq!(px, [0, 0, 0]),
                1 => assert_eq!(px, [255, 0, 0]),
                2 => assert_eq!(px, [0, 255, 0]),
                _ => unreachable!(),
            }
        }
        assert_eq!(c.labels.iter().filter(|&&l| l == 2).count(), 16);
    }

    #[test]
    fn wrap_breaks_at_spaces() {
        assert_eq!(
            wrap("Fred and Wilma talk", 9),
            ["Fred and", "Wilma", "talk"]
        );
    }
}
