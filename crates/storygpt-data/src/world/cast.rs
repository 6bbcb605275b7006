//! The story world's cast: seven procedurally drawn characters, each told apart by body
//! shape, a saturated colour and an accessory, so a small model learns them at 64–128 px.

use crate::dataset::Gender;
use crate::draw::{Canvas, Rgb};

/// Body silhouettes. Each is distinct in outline as well as colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// A round body.
    Circle,
    /// A triangle, apex up.
    Triangle,
    /// A square.
    Square,
    /// A diamond (square on its corner).
    Diamond,
    /// A tall, narrow capsule.
    Capsule,
    /// A trapezoid, wide at the bottom.
    Trapezoid,
    /// A wide ellipse.
    WideEllipse,
}

/// What a character wears on or beside the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accessory {
    /// A tall top hat.
    TopHat,
    /// A bow on top.
    Bow,
    /// A cap with a peak.
    Cap,
    /// A three-pointed crown.
    Crown,
    /// Two pigtails, one each side.
    Pigtails,
    /// A round bowler hat.
    Bowler,
    /// Two horns.
    Horns,
}

/// How a character stands in a frame; captions name the matching action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pose {
    /// Standing still, arms down.
    Stand,
    /// Mid-stride.
    Walk,
    /// One arm raised.
    Wave,
    /// In the air, both arms up.
    Jump,
    /// Sitting: legs folded forward.
    Sit,
}

/// One cast member's look.
#[derive(Debug, Clone, PartialEq)]
pub struct CharacterStyle {
    /// The name captions use.
    pub name: &'static str,
    /// Gender (for pronouns).
    pub gender: Gender,
    /// Silhouette.
    pub body: Body,
    /// Body colour.
    pub color: Rgb,
    /// Accessory.
    pub accessory: Accessory,
    /// Accessory colour.
    pub accent: Rgb,
    /// Body width / body height.
    pub aspect: f32,
}

/// The default cast: seven characters like FlintstonesSV (three female, four male).
pub fn default_cast() -> Vec<CharacterStyle> {
    use Accessory::*;
    use Body::*;
    use Gender::*;
    let c = |name, gender, body, color, accessory, accent, aspect| CharacterStyle {
        name,
        gender,
        body,
        color,
        accessory,
        accent,
        aspect,
    };
    vec![
        c(
            "Fred",
            Male,
            Circle,
            [215, 35, 35],
            TopHat,
            [35, 35, 40],
            1.0,
        ),
        c(
            "Wilma",
            Female,
            Triangle,
            [150, 60, 205],
            Bow,
            [250, 225, 40],
            1.0,
        ),
        c(
            "Barney",
            Male,
            Square,
            [245, 205, 35],
            Cap,
            [30, 150, 60],
            0.95,
        ),
        c(
            "Betty",
            Female,
            Diamond,
            [40, 200, 225],
            Crown,
            [255, 185, 0],
            1.0,
        ),
        c(
            "Pebbles",
            Female,
            Capsule,
            [255, 135, 25],
            Pigtails,
            [255, 90, 180],
            0.6,
        ),
        c(
            "Slate",
            Male,
            Trapezoid,
            [35, 75, 220],
            Bowler,
            [110, 65, 25],
            1.05,
        ),
        c(
            "Dino",
            Male,
            WideEllipse,
            [240, 120, 175],
            Horns,
            [250, 250, 245],
            1.5,
        ),
    ]
}

const INK: Rgb = [20, 20, 24];
const WHITE: Rgb = [250, 250, 250];

/// Where and how to draw a character.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Horizontal centre in pixels.
    pub cx: f32,
    /// The y of the feet (ground contact) in pixels.
    pub feet_y: f32,
    /// Total figure height (feet to top of the head) in pixels.
    pub height: f32,
    /// The pose.
    pub pose: Pose,
    /// Looking right (`true`) or left.
    pub facing_right: bool,
}

impl CharacterStyle {
    /// Draws the character; every pixel it paints gets `label`.
    pub fn draw(&self, canvas: &mut Canvas, p: Placement, label: u8) {
        let lbl = Some(label);
        let h = p.height;
        let body_h = 0.56 * h;
        let body_w = (body_h * self.aspect).min(1.2 * h);
        let leg_len = 0.2 * h;
        let lift = if p.pose == Pose::Jump { 0.12 * h } else { 0.0 };
        let feet_y = p.feet_y - lift;
        let body_bottom = if p.pose == Pose::Sit {
            feet_y - 0.06 * h
        } else {
            feet_y - leg_len
        };
        let cy = body_bottom - body_h / 2.0;
        let cx = p.cx;
        let stroke = (0.035 * h).max(1.0);
        let dir = if p.facing_right { 1.0 } else { -1.0 };

        // Legs.
        let hip_dx = 0.18 * body_w.min(body_h);
        for side in [-1.0, 1.0] {
            let hip = (cx + side * hip_dx, body_bottom - 0.05 * h);
            let foot = match p.pose {
                Pose::Walk => (cx + side * hip_dx + side * 0.1 * h, feet_y),
                Pose::Jump => (cx + side * hip_dx * 1.6, feet_y - 0.03 * h),
                Pose::Sit => (cx + side * hip_dx + dir * 0.16 * h, feet_y),
                _ => (cx + side * hip_dx, feet_y),
            };
            canvas.line(hip, foot, stroke, INK, lbl);
            canvas.ellipse(
                foot.0 + dir * 0.03 * h,
                foot.1,
                0.05 * h,
                0.025 * h,
                INK,
                lbl,
            );
        }

        // Arms (behind the body outline, drawn first).
        let shoulder_y = cy - 0.05 * body_h;
        let half_w = self.half_width_at(body_w, body_h, 0.45);
        for side in [-1.0f32, 1.0] {
            let shoulder = (cx + side * half_w * 0.8, shoulder_y);
            let raised = match p.pose {
                Pose::Jump => true,
                Pose::Wave => (side > 0.0) == p.facing_right,
                _ => false,
            };
            let hand = if raised {
                (shoulder.0 + side * 0.14 * h, shoulder.1 - 0.24 * h)
            } else {
                (shoulder.0 + side * 0.16 * h, shoulder.1 + 0.17 * h)
            };
            canvas.line(shoulder, hand, stroke * 0.9, INK, lbl);
            canvas.ellipse(hand.0, hand.1, 0.035 * h, 0.035 * h, self.color, lbl);
        }

        // Body: an ink outline, then the colour.
        let o = 1.5 * stroke;
        self.fill_body(canvas, cx, cy, body_w + 2.0 * o, body_h + 2.0 * o, INK, lbl);
        self.fill_body(canvas, cx, cy, body_w, body_h, self.color, lbl);
        if self.accessory == Accessory::Horns {
            // Dino's spots.
            let spot = darker(self.color);
            for (dx, dy) in [(-0.25, 0.15), (0.05, 0.25), (0.28, 0.05)] {
                canvas.ellipse(
                    cx + dx * body_w,
                    cy + dy * body_h,
                    0.07 * body_w,
                    0.09 * body_h,
                    spot,
                    lbl,
                );
            }
        }

        // Eyes, looking the way the character faces.
        let eye_y = cy - 0.12 * body_h;
        let eye_r = 0.075 * h;
        for side in [-1.0, 1.0] {
            let ex = cx + side * 0.13 * body_h + dir * 0.05 * body_h;
            canvas.ellipse(ex, eye_y, eye_r, eye_r * 1.15, WHITE, lbl);
            canvas.ellipse(
                ex + dir * 0.35 * eye_r,
                eye_y,
                eye_r * 0.5,
                eye_r * 0.6,
                INK,
                lbl,
            );
        }
        // Mouth.
        canvas.line(
            (cx - 0.08 * body_h + dir * 0.04 * body_h, cy + 0.12 * body_h),
            (cx + 0.08 * body_h + dir * 0.04 * body_h, cy + 0.12 * body_h),
            stroke * 0.6,
            INK,
            lbl,
        );

        self.draw_accessory(canvas, cx, cy - body_h / 2.0, body_w, body_h, h, lbl);
    }

    /// Half the body width at a relative height `t` from the top (0) to the bottom (1).
    fn half_width_at(&self, w: f32, _h: f32, t: f32) -> f32 {
        match self.body {
            Body::Triangle => w / 2.0 * t,
            Body::Diamond => w / 2.0 * (1.0 - (2.0 * t - 1.0).abs()),
            Body::Trapezoid => w / 2.0 * (0.55 + 0.45 * t),
            _ => w / 2.0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_body(&self, c: &mut Canvas, cx: f32, cy: f32, w: f32, h: f32, col: Rgb, l: Option<u8>) {
        let (x0, y0, x1, y1) = (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0);
        match self.body {
            Body::Circle | Body::WideEllipse => c.ellipse(cx, cy, w / 2.0, h / 2.0, col, l),
            Body::Square => c.rect([x0, y0, x1, y1], col, l),
            Body::Triangle => c.polygon(&[(cx, y0), (x1, y1), (x0, y1)], col, l),
            Body::Diamond => c.polygon(&[(cx, y0), (x1, cy), (cx, y1), (x0, cy)], col, l),
            Body::Trapezoid => c.polygon(
                &[
                    (cx - 0.275 * w, y0),
                    (cx + 0.275 * w, y0),
                    (x1, y1),
                    (x0, y1),
                ],
                col,
                l,
            ),
            Body::Capsule => {
                let r = w / 2.0;
                c.rect([x0, y0 + r, x1, y1 - r], col, l);
                c.ellipse(cx, y0 + r, r, r, col, l);
                c.ellipse(cx, y1 - r, r, r, col, l);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_accessory(
        &self,
        c: &mut Canvas,
        cx: f32,
        top: f32,
        bw: f32,
        bh: f32,
        h: f32,
        l: Option<u8>,
    ) {
        let a = self.accent;
        match self.accessory {
            Accessory::TopHat => {
                c.rect(
                    [cx - 0.3 * bh, top - 0.04 * h, cx + 0.3 * bh, top + 0.02 * h],
                    a,
                    l,
                );
                c.rect(
                    [
                        cx - 0.19 * bh,
                        top - 0.2 * h,
                        cx + 0.19 * bh,
                        top - 0.03 * h,
                    ],
                    a,
                    l,
                );
            }
            Accessory::Bow => {
                let y = top - 0.03 * h;
                c.polygon(
                    &[
                        (cx, y),
                        (cx - 0.16 * h, y - 0.08 * h),
                        (cx - 0.16 * h, y + 0.06 * h),
                    ],
                    a,
                    l,
                );
                c.polygon(
                    &[
                        (cx, y),
                        (cx + 0.16 * h, y - 0.08 * h),
                        (cx + 0.16 * h, y + 0.06 * h),
                    ],
                    a,
                    l,
                );
                c.ellipse(cx, y, 0.04 * h, 0.04 * h, a, l);
            }
            Accessory::Cap => {
                c.ellipse(cx, top + 0.01 * h, 0.27 * bh, 0.1 * h, a, l);
                c.rect([cx, top - 0.0 * h, cx + 0.42 * bh, top + 0.04 * h], a, l);
            }
            Accessory::Crown => {
                let (x0, x1) = (cx - 0.24 * bh, cx + 0.24 * bh);
                let (y0, y1) = (top - 0.16 * h, top + 0.01 * h);
                c.polygon(
                    &[
                        (x0, y1),
                        (x0, y0),
                        (cx - 0.12 * bh, y0 + 0.08 * h),
                        (cx, y0 - 0.02 * h),
                        (cx + 0.12 * bh, y0 + 0.08 * h),
                        (x1, y0),
                        (x1, y1),
                    ],
                    a,
                    l,
                );
            }
            Accessory::Pigtails => {
                let y = top + 0.12 * bh;
                for side in [-1.0, 1.0] {
                    let x = cx + side * (bw / 2.0 + 0.07 * h);
                    c.ellipse(x, y, 0.07 * h, 0.1 * h, a, l);
                }
                c.ellipse(cx, top + 0.01 * h, 0.05 * h, 0.04 * h, a, l);
            }
            Accessory::Bowler => {
                c.ellipse(cx, top - 0.01 * h, 0.34 * bh, 0.04 * h, a, l);
                c.ellipse(cx, top - 0.06 * h, 0.2 * bh, 0.09 * h, a, l);
            }
            Accessory::Horns => {
                for side in [-1.0, 1.0] {
                    let x = cx + side * 0.16 * bw;
                    let y = top + 0.05 * bh;
                    c.polygon(
                        &[
                            (x - 0.05 * h, y),
                            (x + 0.05 * h, y),
                            (x + side * 0.06 * h, y - 0.17 * h),
                        ],
                        a,
                        l,
                    );
                }
            }
        }
    }
}

fn darker(c: Rgb) -> Rgb {
    [
        (u16::from(c[0]) * 7 / 10) as u8,
        (u16::from(c[1]) * 7 / 10) as u8,
        (u16::from(c[2]) * 7 / 10) as u8,
    ]
}
