//! PNG charts for a run's `report.md`, drawn with plotters into a bitmap and
//! encoded with `image`. Text needs a TrueType font: the first of
//! `$TESSERA_SIM_FONT` and a few common system fonts that exists is used;
//! without one (or with `TESSERA_SIM_FONT=none`), charts are drawn without
//! captions and tick labels (the report's text says what each shows).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const W: u32 = 800;
const H: u32 = 480;
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Register a font once per process; whether text can be drawn.
fn fonts() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let env = std::env::var("TESSERA_SIM_FONT").ok();
        if env.as_deref() == Some("none") {
            return false;
        }
        for p in env.iter().map(String::as_str).chain(FONT_PATHS) {
            if let Ok(bytes) = std::fs::read(p) {
                // Leaked once: plotters keeps registered fonts for the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Palette for series and classes.
pub(crate) fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

fn save(path: &Path, buf: &[u8]) -> anyhow::Result<()> {
    image::save_buffer_with_format(path, buf, W, H, image::ExtendedColorType::Rgb8, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", path.display()))
}

/// The boxed legend both chart kinds draw.
fn draw_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> anyhow::Result<()> {
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_err)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

/// One named line of (x, y) points.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// Lines over rounds, with a legend.
pub(crate) fn lines(path: &Path, title: &str, series: &[Series], y: Option<Range<f64>>) -> anyhow::Result<()> {
    let text = fonts();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let pts = series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = pts.clone().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (x0, x1) = if x0 > x1 {
            (0.0, 1.0)
        } else if x0 == x1 {
            (x0 - 0.5, x1 + 0.5)
        } else {
            (x0, x1)
        };
        let y = y.unwrap_or_else(|| {
            let (a, b) = pts.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
            if a > b {
                0.0..1.0
            } else {
                let pad = ((b - a) * 0.05).max(1e-9);
                (a - pad).min(0.0)..b + pad
            }
        });
        let mut b = ChartBuilder::on(&root);
        b.margin(15);
        if text {
            b.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
        }
        let mut chart = b.build_cartesian_2d(x0..x1, y).map_err(plot_err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("round");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(plot_err)?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            let drawn =
                chart.draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2))).map_err(plot_err)?;
            if text {
                drawn.label(s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(plot_err)?;
        }
        if text && series.len() > 1 {
            draw_legend(&mut chart)?;
        }
        root.present().map_err(plot_err)?;
    }
    save(path, &buf)
}

/// Stacked bars: for each member, its examples per class.
pub(crate) fn label_distribution(path: &Path, counts: &[Vec<usize>], class_names: &[String]) -> anyhow::Result<()> {
    let text = fonts();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let top = counts.iter().map(|c| c.iter().sum::<usize>()).max().unwrap_or(1).max(1) as f64;
        let mut b = ChartBuilder::on(&root);
        b.margin(15);
        if text {
            b.caption("examples per class, by member", ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(60);
        }
        let n = counts.len().max(1) as f64;
        let mut chart = b.build_cartesian_2d(0.0..n, 0.0..top * 1.05).map_err(plot_err)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh();
        if text {
            mesh.x_desc("member").y_desc("examples").x_labels(counts.len().min(20));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(plot_err)?;
        for (c, name) in class_names.iter().enumerate() {
            let bars = counts.iter().enumerate().map(|(k, row)| {
                let below: usize = row[..c].iter().sum();
                let x = k as f64;
                Rectangle::new([(x + 0.1, below as f64), (x + 0.9, (below + row[c]) as f64)], color(c).filled())
            });
            let drawn = chart.draw_series(bars).map_err(plot_err)?;
            if text {
                let col = color(c);
                drawn
                    .label(name.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], col.filled()));
            }
        }
        if text {
            draw_legend(&mut chart)?;
        }
        root.present().map_err(plot_err)?;
    }
    save(path, &buf)
}
