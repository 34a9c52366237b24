//! Which variant answers a request: by name, by alpha and resolution, or by a latency/accuracy
//! target. Pure functions of the request and a snapshot of the candidates, so every rule is
//! unit-tested without a server.

use crate::engine::network::Precision;
use crate::error::{Error, Result};

/// What the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Nothing: the configured default variant.
    Default,
    /// A variant by name.
    Name(String),
    /// A cell of the alpha x resolution x precision grid.
    Cell {
        /// Width multiplier.
        alpha: f32,
        /// Input resolution.
        resolution: usize,
        /// Number format (fp32 when the request does not say).
        precision: Precision,
    },
    /// The default variant's alpha and resolution in this precision.
    Precision(Precision),
    /// A target; at least one bound is set.
    Target {
        /// Upper bound on the predicted latency, in milliseconds.
        max_latency_ms: Option<f64>,
        /// Lower bound on top-1 accuracy, in percent.
        min_top1: Option<f64>,
        /// Answer with the fastest variant instead of 422 when nothing meets the target.
        fallback_fastest: bool,
        /// Only variants of this precision; any when `None`.
        precision: Option<Precision>,
    },
}

/// The selection fields of a request as every protocol carries them, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectionParams {
    /// A variant name.
    pub model: Option<String>,
    /// Width multiplier (with `resolution`).
    pub alpha: Option<f32>,
    /// Input resolution (with `alpha`).
    pub resolution: Option<usize>,
    /// Latency budget in milliseconds.
    pub max_latency_ms: Option<f64>,
    /// Accuracy floor in percent.
    pub min_top1: Option<f64>,
    /// With a target nobody meets, answer with the fastest variant.
    pub fallback_fastest: bool,
    /// Number format, with a cell, a target, or alone (the default variant's cell).
    pub precision: Option<Precision>,
}

impl SelectionParams {
    /// Validates the fields into a [`Selection`]: one way of choosing at most, alpha and
    /// resolution together, sane bounds.
    pub fn selection(&self) -> Result<Selection> {
        let bad = |m: &str| Err(Error::BadRequest(m.to_string()));
        let cell = self.alpha.is_some() || self.resolution.is_some();
        let target = self.max_latency_ms.is_some() || self.min_top1.is_some();
        let ways = [self.model.is_some(), cell, target];
        if ways.iter().filter(|&&b| b).count() > 1 {
            return bad(
                "choose the variant one way: a model name, or alpha with resolution, or a target \
                 (max_latency_ms and/or min_top1)",
            );
        }
        if self.fallback_fastest && !target {
            return bad("the fastest fallback only goes with a target");
        }
        if self.model.is_some() && self.precision.is_some() {
            return bad("a model name already says its precision: leave precision out");
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return bad("alpha must be a positive number");
            }
        }
        if let Some(m) = self.max_latency_ms {
            if !(m.is_finite() && m > 0.0) {
                return bad("max_latency_ms must be a positive number");
            }
        }
        if let Some(t) = self.min_top1 {
            if !(0.0..=100.0).contains(&t) {
                return bad("min_top1 must be a percentage between 0 and 100");
            }
        }
        Ok(match (&self.model, self.alpha, self.resolution) {
            (Some(name), _, _) => Selection::Name(name.clone()),
            (None, Some(alpha), Some(resolution)) => Selection::Cell {
                alpha,
                resolution,
                precision: self.precision.unwrap_or_default(),
            },
            (None, Some(_), None) | (None, None, Some(_)) => {
                return bad("alpha and resolution go together")
            }
            (None, None, None) if target => Selection::Target {
                max_latency_ms: self.max_latency_ms,
                min_top1: self.min_top1,
                fallback_fastest: self.fallback_fastest,
                precision: self.precision,
            },
            (None, None, None) => match self.precision {
                Some(p) => Selection::Precision(p),
                None => Selection::Default,
            },
        })
    }
}

/// What the router knows about one variant when it decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Variant name.
    pub name: String,
    /// Width multiplier.
    pub alpha: f32,
    /// Input resolution.
    pub resolution: usize,
    /// Number format.
    pub precision: Precision,
    /// Top-1 accuracy in percent (measured, else published), if known.
    pub top1: Option<f64>,
    /// Predicted latency in milliseconds (live measurements, else the warm-up).
    pub predicted_ms: f64,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the chosen candidate.
    pub index: usize,
    /// Whether the target was met; `None` when no target was given.
    pub target_met: Option<bool>,
}

/// Picks the variant for `selection` among `candidates`; `default` is the index of the default
/// variant.
pub fn choose(selection: &Selection, candidates: &[Candidate], default: usize) -> Result<Choice> {
    let plain = |index| Choice {
        index,
        target_met: None,
    };
    match selection {
        Selection::Default => {
            if default < candidates.len() {
                Ok(plain(default))
            } else {
                Err(Error::Internal("no default variant is loaded".into()))
            }
        }
        Selection::Name(name) => candidates
            .iter()
            .position(|c| &c.name == name)
            .map(plain)
            .ok_or_else(|| Error::UnknownModel {
                name: name.clone(),
                known: names(candidates),
            }),
        Selection::Cell {
            alpha,
            resolution,
            precision,
        } => find_cell(candidates, *alpha, *resolution, *precision).map(plain),
        Selection::Precision(precision) => {
            let d = candidates
                .get(default)
                .ok_or_else(|| Error::Internal("no default variant is loaded".into()))?;
            find_cell(candidates, d.alpha, d.resolution, *precision).map(plain)
        }
        Selection::Target {
            max_latency_ms,
            min_top1,
            fallback_fastest,
            precision,
        } => {
            let bounds = (*max_latency_ms, *min_top1);
            choose_target(candidates, bounds, *fallback_fastest, *precision)
        }
    }
}

/// The candidate of one cell of the grid.
fn find_cell(
    candidates: &[Candidate],
    alpha: f32,
    resolution: usize,
    precision: Precision,
) -> Result<usize> {
    candidates
        .iter()
        .position(|c| {
            (c.alpha - alpha).abs() < 1e-3 && c.resolution == resolution && c.precision == precision
        })
        .ok_or_else(|| Error::UnknownModel {
            name: format!("alpha={alpha} resolution={resolution} precision={precision}"),
            known: names(candidates),
        })
}

/// The target's choice among the candidates of `precision` (all when `None`); the bounds are
/// `(max_latency_ms, min_top1)`.
fn choose_target(
    all: &[Candidate],
    (max_latency_ms, min_top1): (Option<f64>, Option<f64>),
    fallback_fastest: bool,
    precision: Option<Precision>,
) -> Result<Choice> {
    let allowed = |c: &Candidate| precision.is_none_or(|p| c.precision == p);
    let candidates = || all.iter().enumerate().filter(|(_, c)| allowed(c));
    if let (Some(p), None) = (precision, candidates().next()) {
        // Nothing to choose from is not a target too high: say what is missing.
        return Err(Error::UnknownModel {
            name: format!("any variant in {p}"),
            known: names(all),
        });
    }
    let fits = |c: &Candidate| {
        max_latency_ms.is_none_or(|m| c.predicted_ms <= m)
            && min_top1.is_none_or(|m| c.top1.is_some_and(|t| t >= m))
    };
    let accuracy = |c: &Candidate| c.top1.unwrap_or(f64::NEG_INFINITY);
    let fitting = candidates().filter(|(_, c)| fits(c));
    // With a latency budget, spend it on accuracy; with only an accuracy floor, the cheapest
    // (fastest) variant above it. Ties go to the faster variant.
    let best = if max_latency_ms.is_some() {
        fitting.max_by(|(_, a), (_, b)| {
            accuracy(a)
                .total_cmp(&accuracy(b))
                .then(b.predicted_ms.total_cmp(&a.predicted_ms))
        })
    } else {
        fitting.min_by(|(_, a), (_, b)| a.predicted_ms.total_cmp(&b.predicted_ms))
    };
    if let Some((index, _)) = best {
        return Ok(Choice {
            index,
            target_met: Some(true),
        });
    }
    if fallback_fastest {
        if let Some((index, _)) =
            candidates().min_by(|(_, a), (_, b)| a.predicted_ms.total_cmp(&b.predicted_ms))
        {
            return Ok(Choice {
                index,
                target_met: Some(false),
            });
        }
    }
    let fastest = candidates()
        .map(|(_, c)| c.predicted_ms)
        .min_by(f64::total_cmp);
    let best_top1 = candidates()
        .filter_map(|(_, c)| c.top1)
        .max_by(f64::total_cmp);
    Err(Error::TargetUnreachable(format!(
        "asked for{}{}{}; the fastest variant is predicted at {}, the most accurate has top-1 {} \
         (add fallback=fastest to be answered anyway)",
        max_latency_ms
            .map(|m| format!(" latency <= {m} ms"))
            .unwrap_or_default(),
        min_top1
            .map(|m| format!(" top-1 >= {m}%"))
            .unwrap_or_default(),
        precision.map(|p| format!(" in {p}")).unwrap_or_default(),
        fastest
            .map(|f| format!("{f:.2} ms"))
            .unwrap_or_else(|| "-".into()),
        best_top1
            .map(|t| format!("{t:.2}%"))
            .unwrap_or_else(|| "unknown".into()),
    )))
}

fn names(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Indices of the candidates that are dominated: another one is both faster (predicted) and more
/// accurate. Unknown accuracy is never dominated nor dominating.
pub fn dominated(candidates: &[Candidate]) -> Vec<bool> {
    candidates
        .iter()
        .map(|c| {
            let Some(top1) = c.top1 else { return false };
            candidates
                .iter()
                .any(|o| o.top1.is_some_and(|t| t > top1) && o.predicted_ms < c.predicted_ms)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, alpha: f32, resolution: usize, top1: f64, ms: f64) -> Candidate {
        Candidate {
            name: name.into(),
            alpha,
            resolution,
            precision: Precision::Fp32,
            top1: Some(top1),
            predicted_ms: ms,
        }
    }

    fn grid() -> Vec<Candidate> {
        vec![
            cand("big", 1.0, 224, 70.0, 12.0),
            cand("mid", 0.5, 160, 60.0, 3.0),
            cand("small", 0.25, 128, 41.0, 0.5),
            cand("slow_bad", 0.5, 224, 55.0, 6.0),
        ]
    }

    fn target(max: Option<f64>, min: Option<f64>) -> Selection {
        Selection::Target {
            max_latency_ms: max,
            min_top1: min,
            fallback_fastest: false,
            precision: None,
        }
    }

    /// The grid plus 8-bit versions of `big` and `small`: a little less accurate, faster.
    fn two_precisions() -> Vec<Candidate> {
        let mut g = grid();
        let int8 = |name: &str, alpha, resolution, top1, ms| Candidate {
            precision: Precision::Int8,
            ..cand(name, alpha, resolution, top1, ms)
        };
        g.push(int8("big_quant", 1.0, 224, 69.5, 7.0));
        g.push(int8("small_quant", 0.25, 128, 39.5, 0.4));
        g
    }

    #[test]
    fn explicit_choices() {
        let g = grid();
        assert_eq!(choose(&Selection::Default, &g, 1).unwrap().index, 1);
        assert_eq!(
            choose(&Selection::Name("small".into()), &g, 0)
                .unwrap()
                .index,
            2
        );
        let cell = Selection::Cell {
            alpha: 0.5,
            resolution: 224,
            precision: Precision::Fp32,
        };
        assert_eq!(choose(&cell, &g, 0).unwrap().index, 3);
        let err = choose(&Selection::Name("nope".into()), &g, 0).unwrap_err();
        assert!(err.to_string().contains("big, mid, small"), "{err}");
        let missing = Selection::Cell {
            alpha: 0.75,
            resolution: 224,
            precision: Precision::Fp32,
        };
        assert_eq!(choose(&missing, &g, 0).unwrap_err().kind().status, 404);
    }

    #[test]
    fn precision_picks_within_a_cell_and_filters_targets() {
        let g = two_precisions();
        let cell = |alpha, resolution, precision| Selection::Cell {
            alpha,
            resolution,
            precision,
        };
        assert_eq!(
            choose(&cell(1.0, 224, Precision::Int8), &g, 0)
                .unwrap()
                .index,
            4
        );
        assert_eq!(
            choose(&cell(1.0, 224, Precision::Fp32), &g, 0)
                .unwrap()
                .index,
            0
        );
        let err = choose(&cell(0.5, 160, Precision::Int8), &g, 0).unwrap_err();
        assert_eq!(err.kind().status, 404);
        assert!(err.to_string().contains("precision=int8"), "{err}");
        // Alone, the default variant's cell in that precision.
        let alone = Selection::Precision(Precision::Int8);
        assert_eq!(choose(&alone, &g, 2).unwrap().index, 5);
        assert_eq!(
            choose(&Selection::Precision(Precision::Fp32), &g, 2)
                .unwrap()
                .index,
            2
        );
        assert_eq!(choose(&alone, &g, 1).unwrap_err().kind().status, 404);
        // Targets choose across precisions unless one is given.
        assert_eq!(choose(&target(Some(8.0), None), &g, 0).unwrap().index, 4);
        assert_eq!(choose(&target(None, Some(30.0)), &g, 0).unwrap().index, 5);
        let fp32_only = Selection::Target {
            max_latency_ms: Some(8.0),
            min_top1: None,
            fallback_fastest: false,
            precision: Some(Precision::Fp32),
        };
        assert_eq!(choose(&fp32_only, &g, 0).unwrap().index, 1);
        let int8_fallback = Selection::Target {
            max_latency_ms: Some(0.1),
            min_top1: None,
            fallback_fastest: true,
            precision: Some(Precision::Int8),
        };
        let c = choose(&int8_fallback, &g, 0).unwrap();
        assert_eq!((c.index, c.target_met), (5, Some(false)));
        // A precision nothing is served in is a missing model, fallback or not.
        let err = choose(&int8_fallback, &grid(), 0).unwrap_err();
        assert_eq!(err.kind().status, 404, "{err}");
        assert!(err.to_string().contains("int8"), "{err}");
    }

    #[test]
    fn latency_budget_buys_the_most_accuracy_that_fits() {
        let g = grid();
        let c = choose(&target(Some(5.0), None), &g, 0).unwrap();
        assert_eq!((c.index, c.target_met), (1, Some(true)));
        assert_eq!(choose(&target(Some(100.0), None), &g, 0).unwrap().index, 0);
        assert_eq!(choose(&target(Some(0.5), None), &g, 0).unwrap().index, 2);
    }

    #[test]
    fn accuracy_floor_takes_the_fastest_above_it() {
        let g = grid();
        assert_eq!(choose(&target(None, Some(50.0)), &g, 0).unwrap().index, 1);
        assert_eq!(choose(&target(None, Some(65.0)), &g, 0).unwrap().index, 0);
        assert_eq!(choose(&target(None, Some(10.0)), &g, 0).unwrap().index, 2);
    }

    #[test]
    fn both_bounds_take_the_most_accurate_that_meets_both() {
        let g = grid();
        assert_eq!(
            choose(&target(Some(7.0), Some(50.0)), &g, 0).unwrap().index,
            1
        );
        let err = choose(&target(Some(5.0), Some(65.0)), &g, 0).unwrap_err();
        assert_eq!(err.kind().status, 422);
        assert!(err.to_string().contains("0.50 ms"), "{err}");
    }

    #[test]
    fn unreachable_target_falls_back_to_the_fastest_when_asked() {
        let g = grid();
        let sel = Selection::Target {
            max_latency_ms: Some(0.1),
            min_top1: None,
            fallback_fastest: true,
            precision: None,
        };
        let c = choose(&sel, &g, 0).unwrap();
        assert_eq!((c.index, c.target_met), (2, Some(false)));
    }

    #[test]
    fn unknown_accuracy_never_satisfies_a_floor() {
        let mut g = grid();
        g[1].top1 = None;
        assert_eq!(choose(&target(None, Some(50.0)), &g, 0).unwrap().index, 3);
        // With only a budget it can still be chosen, as the last resort.
        let only = vec![g[1].clone()];
        assert_eq!(choose(&target(Some(5.0), None), &only, 0).unwrap().index, 0);
    }

    #[test]
    fn selection_params_allow_one_way_of_choosing() {
        let p = |f: fn(&mut SelectionParams)| {
            let mut params = SelectionParams::default();
            f(&mut params);
            params.selection()
        };
        assert_eq!(p(|_| {}).unwrap(), Selection::Default);
        assert_eq!(
            p(|s| s.model = Some("m".into())).unwrap(),
            Selection::Name("m".into())
        );
        assert!(matches!(
            p(|s| {
                s.alpha = Some(0.5);
                s.resolution = Some(160)
            }),
            Ok(Selection::Cell { .. })
        ));
        assert!(matches!(
            p(|s| s.max_latency_ms = Some(5.0)),
            Ok(Selection::Target { .. })
        ));
        assert_eq!(
            p(|s| s.precision = Some(Precision::Int8)).unwrap(),
            Selection::Precision(Precision::Int8)
        );
        assert!(matches!(
            p(|s| {
                s.alpha = Some(0.5);
                s.resolution = Some(160);
                s.precision = Some(Precision::Int8)
            }),
            Ok(Selection::Cell {
                precision: Precision::Int8,
                ..
            })
        ));
        for bad in [
            p(|s| s.alpha = Some(0.5)),
            p(|s| s.resolution = Some(160)),
            p(|s| {
                s.model = Some("m".into());
                s.min_top1 = Some(50.0)
            }),
            p(|s| s.fallback_fastest = true),
            p(|s| {
                s.model = Some("m".into());
                s.precision = Some(Precision::Fp32)
            }),
            p(|s| s.max_latency_ms = Some(f64::NAN)),
            p(|s| s.max_latency_ms = Some(0.0)),
            p(|s| s.min_top1 = Some(-1.0)),
        ] {
            assert_eq!(bad.unwrap_err().kind().status, 400);
        }
    }

    #[test]
    fn dominated_variants_are_slower_and_less_accurate_than_another() {
        assert_eq!(dominated(&grid()), vec![false, false, false, true]);
    }
}
