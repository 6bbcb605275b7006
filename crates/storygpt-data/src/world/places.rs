//! The story world's ten places. Each has its own global colour layout (what a small model
//! keys on) and one or two jittered props, so no two frames of a place are identical.

use rand::Rng;

use crate::draw::{Canvas, Rgb};

/// A place: its name and how captions mention it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// Label name ("kitchen").
    pub name: &'static str,
    /// "in the kitchen".
    pub at: &'static str,
    /// "into the kitchen" (for arrivals).
    pub into: &'static str,
    /// The y (fraction of the height) where the ground starts.
    pub ground: f32,
}

/// The default places.
pub const PLACES: [Place; 10] = [
    Place {
        name: "kitchen",
        at: "in the kitchen",
        into: "into the kitchen",
        ground: 0.62,
    },
    Place {
        name: "park",
        at: "in the park",
        into: "into the park",
        ground: 0.6,
    },
    Place {
        name: "beach",
        at: "on the beach",
        into: "onto the beach",
        ground: 0.62,
    },
    Place {
        name: "campsite",
        at: "at the campsite",
        into: "into the campsite",
        ground: 0.64,
    },
    Place {
        name: "snow",
        at: "in the snow",
        into: "into the snow",
        ground: 0.6,
    },
    Place {
        name: "city",
        at: "in the city",
        into: "into the city",
        ground: 0.66,
    },
    Place {
        name: "living room",
        at: "in the living room",
        into: "into the living room",
        ground: 0.63,
    },
    Place {
        name: "desert",
        at: "in the desert",
        into: "into the desert",
        ground: 0.58,
    },
    Place {
        name: "forest",
        at: "in the forest",
        into: "into the forest",
        ground: 0.64,
    },
    Place {
        name: "quarry",
        at: "at the quarry",
        into: "into the quarry",
        ground: 0.6,
    },
];

fn jitter(c: Rgb, rng: &mut impl Rng, amount: i16) -> Rgb {
    let mut out = c;
    let d: i16 = rng.random_range(-amount..=amount);
    for v in &mut out {
        *v = (i16::from(*v) + d).clamp(0, 255) as u8;
    }
    out
}

/// Paints place `index` on `canvas` (labels stay 0).
pub fn draw_place(index: usize, canvas: &mut Canvas, rng: &mut impl Rng) {
    let w = canvas.width as f32;
    let h = canvas.height as f32;
    let g = PLACES[index].ground * h;
    let none = None;
    match PLACES[index].name {
        "kitchen" => {
            canvas.rect([0.0, 0.0, w, g], jitter([240, 228, 190], rng, 8), none);
            // Checkered floor.
            let tile = (w / 8.0).max(2.0);
            let mut y = g;
            let mut row = 0;
            while y < h {
                let mut x = 0.0;
                let mut col = row % 2;
                while x < w {
                    let c = if col % 2 == 0 {
                        [120, 75, 40]
                    } else {
                        [235, 235, 225]
                    };
                    canvas.rect([x, y, x + tile, y + tile / 2.0], c, none);
                    x += tile;
                    col += 1;
                }
                y += tile / 2.0;
                row += 1;
            }
            // Cupboard and window.
            let cx = rng.random_range(0.05..0.55) * w;
            canvas.rect([cx, 0.12 * h, cx + 0.3 * w, 0.4 * h], [150, 95, 50], none);
            canvas.rect(
                [cx + 0.145 * w, 0.12 * h, cx + 0.155 * w, 0.4 * h],
                [90, 55, 25],
                none,
            );
            let wx = if cx > 0.4 * w { 0.08 * w } else { 0.68 * w };
            canvas.rect([wx, 0.1 * h, wx + 0.22 * w, 0.3 * h], [170, 215, 250], none);
        }
        "park" => {
            canvas.rect([0.0, 0.0, w, g], jitter([150, 205, 245], rng, 8), none);
            canvas.rect([0.0, g, w, h], jitter([85, 175, 70], rng, 10), none);
            let tx = rng.random_range(0.1..0.9) * w;
            canvas.rect(
                [tx - 0.03 * w, g - 0.25 * h, tx + 0.03 * w, g + 0.02 * h],
                [110, 70, 35],
                none,
            );
            canvas.ellipse(tx, g - 0.32 * h, 0.14 * w, 0.14 * h, [40, 130, 45], none);
            let cx = rng.random_range(0.1..0.9) * w;
            canvas.ellipse(cx, 0.15 * h, 0.1 * w, 0.04 * h, [250, 250, 250], none);
        }
        "beach" => {
            canvas.rect(
                [0.0, 0.0, w, 0.45 * h],
                jitter([120, 200, 250], rng, 8),
                none,
            );
            canvas.rect([0.0, 0.45 * h, w, g], jitter([30, 110, 200], rng, 10), none);
            canvas.rect([0.0, g, w, h], jitter([240, 215, 150], rng, 8), none);
            let sx = rng.random_range(0.1..0.9) * w;
            canvas.ellipse(sx, 0.14 * h, 0.07 * w, 0.07 * w, [255, 230, 60], none);
        }
        "campsite" => {
            canvas.rect([0.0, 0.0, w, g], jitter([20, 25, 70], rng, 6), none);
            canvas.rect([0.0, g, w, h], jitter([30, 70, 40], rng, 6), none);
            for _ in 0..8 {
                let x = rng.random_range(0.0..w);
                let y = rng.random_range(0.0..g * 0.8);
                canvas.rect([x, y, x + 1.5, y + 1.5], [250, 250, 210], none);
            }
            let mx = rng.random_range(0.1..0.9) * w;
            canvas.ellipse(mx, 0.15 * h, 0.06 * w, 0.06 * w, [245, 245, 220], none);
            // A tent.
            let tx = rng.random_range(0.15..0.85) * w;
            canvas.polygon(
                &[
                    (tx, g - 0.22 * h),
                    (tx + 0.14 * w, g + 0.03 * h),
                    (tx - 0.14 * w, g + 0.03 * h),
                ],
                [200, 110, 40],
                none,
            );
        }
        "snow" => {
            canvas.rect([0.0, 0.0, w, g], jitter([200, 215, 230], rng, 6), none);
            let mx = rng.random_range(0.2..0.8) * w;
            canvas.polygon(
                &[(mx, 0.18 * h), (mx + 0.4 * w, g), (mx - 0.4 * w, g)],
                [130, 135, 150],
                none,
            );
            canvas.polygon(
                &[
                    (mx, 0.18 * h),
                    (mx + 0.1 * w, 0.28 * h),
                    (mx - 0.1 * w, 0.28 * h),
                ],
                [250, 250, 252],
                none,
            );
            canvas.rect([0.0, g, w, h], jitter([248, 248, 252], rng, 4), none);
        }
        "city" => {
            canvas.rect([0.0, 0.0, w, g], jitter([255, 215, 170], rng, 8), none);
            let mut x = 0.0;
            while x < w {
                let bw = rng.random_range(0.12..0.22) * w;
                let top = rng.random_range(0.15..0.45) * h;
                canvas.rect([x, top, x + bw - 1.0, g], [95, 95, 110], none);
                let mut wy = top + 0.04 * h;
                while wy < g - 0.06 * h {
                    canvas.rect(
                        [x + 0.2 * bw, wy, x + 0.4 * bw, wy + 0.03 * h],
                        [255, 235, 120],
                        none,
                    );
                    canvas.rect(
                        [x + 0.6 * bw, wy, x + 0.8 * bw, wy + 0.03 * h],
                        [255, 235, 120],
                        none,
                    );
                    wy += 0.08 * h;
                }
                x += bw;
            }
            canvas.rect([0.0, g, w, h], jitter([60, 60, 65], rng, 5), none);
            canvas.rect([0.0, g + 0.15 * h, w, g + 0.17 * h], [230, 230, 230], none);
        }
        "living room" => {
            canvas.rect([0.0, 0.0, w, g], jitter([130, 40, 55], rng, 8), none);
            let stripe = (w / 10.0).max(2.0);
            let mut x = stripe / 2.0;
            while x < w {
                canvas.rect([x, 0.0, x + stripe / 3.0, g], [150, 60, 75], none);
                x += stripe;
            }
            canvas.rect([0.0, g, w, h], jitter([180, 130, 80], rng, 8), none);
            let sx = rng.random_range(0.05..0.55) * w;
            canvas.rect(
                [sx, g - 0.16 * h, sx + 0.4 * w, g + 0.02 * h],
                [60, 100, 150],
                none,
            );
            canvas.rect(
                [sx, g - 0.26 * h, sx + 0.4 * w, g - 0.16 * h],
                [45, 80, 125],
                none,
            );
        }
        "desert" => {
            canvas.rect([0.0, 0.0, w, g], jitter([175, 220, 250], rng, 6), none);
            canvas.rect([0.0, g, w, h], jitter([225, 180, 105], rng, 8), none);
            let dx = rng.random_range(0.0..1.0) * w;
            canvas.ellipse(dx, g + 0.02 * h, 0.35 * w, 0.09 * h, [210, 160, 90], none);
            let cx = rng.random_range(0.1..0.9) * w;
            canvas.rect(
                [cx - 0.025 * w, g - 0.24 * h, cx + 0.025 * w, g + 0.03 * h],
                [50, 140, 60],
                none,
            );
            canvas.rect(
                [cx - 0.09 * w, g - 0.16 * h, cx - 0.025 * w, g - 0.13 * h],
                [50, 140, 60],
                none,
            );
            canvas.rect(
                [cx - 0.09 * w, g - 0.22 * h, cx - 0.065 * w, g - 0.13 * h],
                [50, 140, 60],
                none,
            );
        }
        "forest" => {
            canvas.rect([0.0, 0.0, w, g], jitter([25, 85, 45], rng, 8), none);
            let mut x = rng.random_range(0.0..0.1) * w;
            while x < w {
                let tw = rng.random_range(0.04..0.07) * w;
                canvas.rect([x, 0.0, x + tw, g], [85, 55, 30], none);
                x += rng.random_range(0.14..0.24) * w;
            }
            canvas.rect([0.0, g, w, h], jitter([105, 75, 45], rng, 8), none);
        }
        _ => {
            // quarry: grey-brown rock faces under a hazy sky.
            canvas.rect(
                [0.0, 0.0, w, 0.25 * h],
                jitter([215, 205, 185], rng, 6),
                none,
            );
            canvas.rect([0.0, 0.25 * h, w, g], jitter([150, 120, 95], rng, 8), none);
            for i in 0..3 {
                let y = 0.25 * h + (i as f32 + 1.0) * (g - 0.25 * h) / 4.0;
                canvas.rect([0.0, y, w, y + 0.015 * h], [120, 95, 75], none);
            }
            canvas.rect([0.0, g, w, h], jitter([175, 165, 150], rng, 6), none);
            let bx = rng.random_range(0.1..0.9) * w;
            canvas.ellipse(bx, g + 0.04 * h, 0.09 * w, 0.05 * h, [120, 115, 110], none);
        }
    }
}
