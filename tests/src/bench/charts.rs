//! The report's pictures, as SVG written by hand: a chart here is a few dozen rectangles,
//! lines and labels, which a plotting crate would bring font and raster dependencies for.
//! Two kinds: horizontal bars in groups, each bar with the interval of its figure as a
//! whisker (ns per packet class, forwarding rates), and lines over a logarithmic axis
//! (cost against allow-list size).

use std::fmt::Write as _;

use super::stats::{group_thousands, num, Estimate};

/// One picture of the report: written as `file` next to report.md, which shows it.
#[derive(Clone, Debug)]
pub struct Chart {
    /// File name, e.g. `ns_per_class.svg`.
    pub file: String,
    /// What it shows (the image's alternative text too).
    pub title: String,
    pub svg: String,
}

/// A series' name and colour (colour-blind safe: Okabe and Ito's palette).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
}

/// Colours for up to six series.
pub const PALETTE: [&str; 6] = [
    "#999999", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9",
];

impl Series {
    pub fn new(name: impl Into<String>, index: usize) -> Series {
        Series {
            name: name.into(),
            color: PALETTE[index % PALETTE.len()],
        }
    }
}

const FONT: &str = r#"font-family="sans-serif" font-size="12""#;
const WIDTH: f64 = 860.0;
const TITLE_HEIGHT: f64 = 28.0;
const LEGEND_HEIGHT: f64 = 22.0;
const AXIS_HEIGHT: f64 = 36.0;
const BAR_HEIGHT: f64 = 9.0;
const GROUP_GAP: f64 = 10.0;

/// Text for an SVG element: `&`, `<` and `>` escaped (and quotes, for attributes).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis end and step for values up to `max`: 1, 2 or 5 times a power of ten, about
/// five ticks.
fn ticks(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power);
    ((max / step).ceil() * step, step)
}

fn header(svg: &mut String, height: f64, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" {FONT}>"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(title));
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
}

/// Where each series' legend entry goes, from `x0` on, wrapping at the right edge: (x, row).
fn legend_layout(series: &[Series], x0: f64) -> Vec<(f64, usize)> {
    let mut at = Vec::new();
    let (mut x, mut row) = (x0, 0);
    for s in series {
        // About 7 px a character at 12 px sans-serif.
        let width = 36.0 + 7.0 * s.name.chars().count() as f64;
        if x > x0 && x + width > WIDTH {
            (x, row) = (x0, row + 1);
        }
        at.push((x, row));
        x += width;
    }
    at
}

/// The legend's height: one line per row of entries.
fn legend_height(series: &[Series], x0: f64) -> f64 {
    let rows = legend_layout(series, x0)
        .last()
        .map_or(0, |&(_, row)| row + 1);
    LEGEND_HEIGHT * rows.max(1) as f64
}

fn legend(svg: &mut String, series: &[Series], x0: f64) {
    for (s, (x, row)) in series.iter().zip(legend_layout(series, x0)) {
        let y = TITLE_HEIGHT + 12.0 + LEGEND_HEIGHT * row as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
            y - 10.0,
            s.color,
            x + 16.0,
            escape(&s.name)
        );
    }
}

/// An axis label: as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        group_thousands(value.round() as i64)
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// A value on a bar chart: the figure and, when known, its interval (whisker).
#[derive(Clone, Copy, Debug)]
pub struct Value {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl From<Estimate> for Value {
    fn from(estimate: Estimate) -> Value {
        Value {
            value: estimate.median,
            low: estimate.low,
            high: estimate.high,
        }
    }
}

/// Horizontal bars: one group per label, one bar per series in each group, a whisker for
/// each bar's interval, the value written after it.
pub struct BarChart {
    pub title: String,
    /// The axis' unit, e.g. "ns per packet".
    pub unit: String,
    pub series: Vec<Series>,
    /// (group label, a value per series: `None` where the series has no figure).
    pub groups: Vec<(String, Vec<Option<Value>>)>,
}

impl BarChart {
    pub fn svg(&self) -> String {
        let label_width = 40.0
            + 6.5
                * self
                    .groups
                    .iter()
                    .map(|(label, _)| label.chars().count())
                    .max()
                    .unwrap_or(0) as f64;
        let label_width = label_width.min(WIDTH * 0.45);
        let plot_left = label_width;
        let plot_right = WIDTH - 70.0;
        let group_height = BAR_HEIGHT * self.series.len() as f64 + GROUP_GAP;
        let plot_top = TITLE_HEIGHT + legend_height(&self.series, plot_left);
        let plot_height = group_height * self.groups.len() as f64;
        let height = plot_top + plot_height + AXIS_HEIGHT;
        let max = self
            .groups
            .iter()
            .flat_map(|(_, values)| values.iter().flatten())
            .flat_map(|v| [v.value, v.high])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let (end, step) = ticks(max);
        let x = |v: f64| plot_left + (plot_right - plot_left) * (v / end).clamp(0.0, 1.0);

        let mut svg = String::new();
        header(&mut svg, height, &self.title);
        legend(&mut svg, &self.series, plot_left);
        // Grid and axis.
        let bottom = plot_top + plot_height;
        let mut tick = 0.0;
        while tick <= end + step / 2.0 {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{plot_top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#dddddd"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle">{2}</text>"##,
                x(tick),
                bottom + 14.0,
                tick_label(tick, step)
            );
            tick += step;
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (plot_left + plot_right) / 2.0,
            bottom + 30.0,
            escape(&self.unit)
        );
        for (g, (label, values)) in self.groups.iter().enumerate() {
            let top = plot_top + g as f64 * group_height + GROUP_GAP / 2.0;
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                plot_left - 6.0,
                top + BAR_HEIGHT * self.series.len() as f64 / 2.0 + 4.0,
                escape(label)
            );
            for (s, value) in values.iter().enumerate() {
                let Some(value) = value.filter(|v| v.value.is_finite()) else {
                    continue;
                };
                let y = top + s as f64 * BAR_HEIGHT;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{plot_left:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    x(value.value) - plot_left,
                    BAR_HEIGHT - 1.0,
                    self.series[s].color,
                    escape(&self.series[s].name),
                    num(value.value)
                );
                let mid = y + (BAR_HEIGHT - 1.0) / 2.0;
                if value.low.is_finite() && value.high.is_finite() {
                    let _ = writeln!(
                        svg,
                        r#"<path d="M{0:.1} {1:.1}v{2:.1}m0 -{3:.1}H{4:.1}m0 -{3:.1}v{2:.1}" stroke="black" fill="none"/>"#,
                        x(value.low),
                        mid - 3.0,
                        6.0,
                        3.0,
                        x(value.high)
                    );
                }
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
                    x(value.high.max(value.value).min(end)) + 4.0,
                    mid + 3.0,
                    num(value.value)
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Lines over a logarithmic x axis (allow-list sizes), one per series, with a whisker for
/// each point's interval.
pub struct LineChart {
    pub title: String,
    pub x_unit: String,
    pub y_unit: String,
    pub series: Vec<Series>,
    /// Per series: (x, value) points, x > 0.
    pub points: Vec<Vec<(f64, Value)>>,
}

impl LineChart {
    pub fn svg(&self) -> String {
        let plot_left = 70.0;
        let plot_right = WIDTH - 30.0;
        let plot_top = TITLE_HEIGHT + legend_height(&self.series, plot_left) + 8.0;
        let plot_height = 300.0;
        let bottom = plot_top + plot_height;
        let height = bottom + AXIS_HEIGHT + 4.0;
        let xs: Vec<f64> = self
            .points
            .iter()
            .flatten()
            .map(|(x, _)| *x)
            .filter(|x| *x > 0.0)
            .collect();
        let x_min = xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0);
        let x_max = xs.iter().copied().fold(0.0, f64::max).max(x_min * 10.0);
        let (lo_decade, hi_decade) = (x_min.log10().floor(), x_max.log10().ceil());
        let max = self
            .points
            .iter()
            .flatten()
            .flat_map(|(_, v)| [v.value, v.high])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let (end, step) = ticks(max);
        let x = |v: f64| {
            plot_left + (plot_right - plot_left) * (v.log10() - lo_decade) / (hi_decade - lo_decade)
        };
        let y = |v: f64| bottom - plot_height * (v / end).clamp(0.0, 1.0);

        let mut svg = String::new();
        header(&mut svg, height, &self.title);
        legend(&mut svg, &self.series, plot_left);
        let mut tick = 0.0;
        while tick <= end + step / 2.0 {
            let _ = writeln!(
                svg,
                r##"<line x1="{plot_left:.1}" y1="{0:.1}" x2="{plot_right:.1}" y2="{0:.1}" stroke="#dddddd"/><text x="{1:.1}" y="{2:.1}" text-anchor="end">{3}</text>"##,
                y(tick),
                plot_left - 6.0,
                y(tick) + 4.0,
                tick_label(tick, step)
            );
            tick += step;
        }
        let mut decade = lo_decade;
        while decade <= hi_decade {
            let at = 10f64.powf(decade);
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{plot_top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#dddddd"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle">{2}</text>"##,
                x(at),
                bottom + 14.0,
                group_thousands(at.round() as i64)
            );
            decade += 1.0;
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (plot_left + plot_right) / 2.0,
            bottom + 30.0,
            escape(&self.x_unit)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (plot_top + bottom) / 2.0,
            escape(&self.y_unit)
        );
        for (series, points) in self.series.iter().zip(&self.points) {
            let path: Vec<String> = points
                .iter()
                .filter(|(_, v)| v.value.is_finite())
                .enumerate()
                .map(|(i, (px, v))| {
                    format!(
                        "{}{:.1} {:.1}",
                        if i == 0 { 'M' } else { 'L' },
                        x(*px),
                        y(v.value)
                    )
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<path d="{}" stroke="{}" stroke-width="2" fill="none"/>"#,
                path.join(""),
                series.color
            );
            for (px, v) in points.iter().filter(|(_, v)| v.value.is_finite()) {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}, {}: {}</title></circle>"#,
                    x(*px),
                    y(v.value),
                    series.color,
                    escape(&series.name),
                    group_thousands(px.round() as i64),
                    num(v.value)
                );
                if v.low.is_finite() && v.high.is_finite() {
                    let _ = writeln!(
                        svg,
                        r#"<path d="M{0:.1} {1:.1}V{2:.1}M{3:.1} {1:.1}h6M{3:.1} {2:.1}h6" stroke="{4}" fill="none"/>"#,
                        x(*px),
                        y(v.low),
                        y(v.high),
                        x(*px) - 3.0,
                        series.color
                    );
                }
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_and_legend_rows() {
        assert_eq!(tick_label(50_000.0, 10_000.0), "50,000");
        assert_eq!(tick_label(0.0, 50.0), "0");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        let series: Vec<Series> = (0..6)
            .map(|i| Series::new(format!("a rather long series name {i}"), i))
            .collect();
        assert_eq!(legend_height(&series[..1], 70.0), LEGEND_HEIGHT);
        assert_eq!(legend_height(&series, 70.0), 2.0 * LEGEND_HEIGHT);
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(ticks(113.0), (150.0, 50.0));
        assert_eq!(ticks(38.0), (40.0, 10.0));
        assert_eq!(ticks(0.9), (1.0, 0.2));
        assert_eq!(ticks(f64::NAN), (1.0, 0.2));
    }

    #[test]
    fn text_is_escaped_and_every_bar_drawn() {
        let chart = BarChart {
            title: "a <b> & c".into(),
            unit: "ns".into(),
            series: vec![Series::new("floor", 0), Series::new("agent", 1)],
            groups: vec![
                (
                    "x".into(),
                    vec![
                        Some(Value {
                            value: 10.0,
                            low: 9.0,
                            high: 11.0,
                        }),
                        None,
                    ],
                ),
                (
                    "y".into(),
                    vec![
                        Some(Value {
                            value: 20.0,
                            low: f64::NAN,
                            high: f64::NAN,
                        }),
                        Some(Value {
                            value: 30.0,
                            low: 29.0,
                            high: 31.0,
                        }),
                    ],
                ),
            ],
        };
        let svg = chart.svg();
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(!svg.contains("<b>"));
        // Three bars drawn (one value missing), two of them with whiskers.
        assert_eq!(svg.matches("<rect x=").count(), 3 + 2); // and two legend swatches
        assert_eq!(svg.matches(r#"stroke="black""#).count(), 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
