//! The scenario suite: every scenario of the table × every controller, on
//! the paused clock with a fixed seed, each asserting its figures.
//!
//! The goal for the default controller (gradient) is: goodput ≥ 0.9 of the
//! capacity (of the offered load where lower), overload errors ≤ 5 %, and
//! settled within ±20 % of a new capacity in ≤ 10 round trips (where the
//! scenario has a capacity in calls to settle at). It is met on every
//! scenario, and `gradient_meets_the_goal_on_every_scenario` says so. The
//! other controllers' assertions record their measured behaviour (with a
//! small margin), so a regression shows.
#![allow(clippy::unwrap_used)]

#[path = "support/scenarios.rs"]
mod scenarios;

use scenarios::{Ctl, Figures, Scenario, best_fixed_makespan, makespan, run, run_seeded, table};

fn scenario(name: &str) -> Scenario {
    table().into_iter().find(|s| s.name == name).unwrap()
}

fn figures(name: &str) -> [(Ctl, Figures); 4] {
    let s = scenario(name);
    Ctl::ADAPTIVE.map(|ctl| {
        let f = run(&s, ctl);
        println!("{name} {}: {f:?}", ctl.name());
        (ctl, f)
    })
}

fn of(all: &[(Ctl, Figures); 4], ctl: Ctl) -> &Figures {
    &all.iter().find(|(c, _)| *c == ctl).unwrap().1
}

/// The goal for the default controller, in full, for `ctl` on scenario `name`.
#[track_caller]
fn meets_goal(name: &str, ctl: Ctl, f: &Figures) {
    let who = format!("{name} {}", ctl.name());
    assert!(f.goodput >= 0.9, "{who}: goodput {:.3} < 0.9", f.goodput);
    assert!(
        f.overload_rate <= 0.05,
        "{who}: overload rate {:.3} > 5 %",
        f.overload_rate
    );
    // A light load or a quota has no capacity in calls to settle at.
    let base = name.split(" (").next().unwrap_or(name);
    if !scenario(base).settles() {
        return;
    }
    let rtts = f.rtts_to_capacity.expect("settles within ±20 %");
    assert!(
        rtts <= 10.0,
        "{who}: settled after {rtts:.1} round trips > 10"
    );
}

#[track_caller]
fn at_least(what: &str, value: f64, min: f64) {
    assert!(value >= min, "{what}: {value:.3} < {min}");
}

#[track_caller]
fn at_most(what: &str, value: f64, max: f64) {
    assert!(value <= max, "{what}: {value:.3} > {max}");
}

#[test]
fn cap_5_answered_with_429() {
    const NAME: &str = "cap-5-429";
    let all = figures(NAME);
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    // At five calls a probe to six is a 20 % overrun: AIMD (+1 per RTT) and
    // the windowed preset (+2 per window) pay for it in refusals.
    at_least("aimd overload", of(&all, Ctl::Aimd).overload_rate, 0.10);
    at_least(
        "windowed overload",
        of(&all, Ctl::Windowed).overload_rate,
        0.30,
    );
    at_most("windowed goodput", of(&all, Ctl::Windowed).goodput, 0.85);
}

#[test]
fn cap_50_answered_with_429() {
    const NAME: &str = "cap-50-429";
    let all = figures(NAME);
    for ctl in [Ctl::Gradient, Ctl::Aimd, Ctl::Vegas] {
        meets_goal(NAME, ctl, of(&all, ctl));
    }
    // The preset reaches its max of 50 = the capacity, but +2 per 20 answers
    // takes about 25 round trips.
    let w = of(&all, Ctl::Windowed);
    at_least("windowed goodput", w.goodput, 0.9);
    at_least("windowed round trips", w.rtts_to_capacity.unwrap(), 20.0);
}

#[test]
fn cap_200_answered_with_429() {
    const NAME: &str = "cap-200-429";
    let all = figures(NAME);
    for ctl in [Ctl::Gradient, Ctl::Aimd, Ctl::Vegas] {
        meets_goal(NAME, ctl, of(&all, ctl));
    }
    // Slow start: 5 → 200 in about six round trips, not 195.
    at_most(
        "gradient round trips",
        of(&all, Ctl::Gradient).rtts_to_capacity.unwrap(),
        8.0,
    );
    // The windowed rules (+2 per 20 answers) take about 40 round trips to
    // the capacity, and overrun it then. (Its preset's max of 50 would cap
    // it at a quarter; the baseline has the others' ceiling.)
    let w = of(&all, Ctl::Windowed);
    at_most("windowed goodput", w.goodput, 0.85);
    at_least("windowed round trips", w.rtts_to_capacity.unwrap(), 30.0);
}

#[test]
fn rate_cap_with_retry_after() {
    const NAME: &str = "rate-20-retry-after";
    let all = figures(NAME);
    // Met by every controller but the preset: the first 429 with a
    // Retry-After turns pacing on (at most 1.25 × limit per lowest RTT),
    // so the bursts a concurrency limit lets through (the answers of one
    // round trip come back together) no longer overrun the burst of 5, and
    // the limits settle at 19..26 with few refusals. (Before pacing,
    // gradient reached 0.74 of the rate after 27 round trips, AIMD 0.89.)
    for ctl in [Ctl::Gradient, Ctl::Aimd, Ctl::Vegas] {
        meets_goal(NAME, ctl, of(&all, ctl));
        at_least(
            &format!("{} goodput", ctl.name()),
            of(&all, ctl).goodput,
            0.95,
        );
    }
    // The preset never grows: the mean latency (1.1 s) is above its 500 ms bar.
    assert_eq!(of(&all, Ctl::Windowed).max_limit, 5);
}

#[test]
fn queueing_server_with_a_latency_knee() {
    const NAME: &str = "queue-knee";
    let all = figures(NAME);
    let g = of(&all, Ctl::Gradient);
    at_least("gradient goodput", g.goodput, 0.95);
    at_most("gradient overload", g.overload_rate, 0.0);
    at_most("gradient p99 over unloaded", g.p99_ratio, 1.4);
    // Slow start still doubles 40 → 80 (at 40 in service the knee adds
    // only 17 %, and the first answers under 40 are the quick ones), but
    // it reads only answers of calls made under the limit it doubled to,
    // so the latency shows a round trip later, not two, and the cut that
    // ends slow start halves (80 → 40): within ±20 % after about 8 round
    // trips (15.5 before), then within 42..47.
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    at_most("gradient max limit", g.max_limit as f64, 48.0);
    at_least("gradient min limit", g.min_limit as f64, 40.0);
    // Vegas holds a small queue: within ±20 % after about 10 round trips.
    let v = of(&all, Ctl::Vegas);
    at_most("vegas round trips", v.rtts_to_capacity.unwrap(), 12.0);
    at_most("vegas p99 over unloaded", v.p99_ratio, 1.4);
    // AIMD reads no latency: it climbs past the queue until every one of
    // the 200 callers is let in (and a third above them: 266; it climbed to
    // 466 before growth stopped at a third above the demand), and the tail
    // grows.
    let a = of(&all, Ctl::Aimd);
    at_least("aimd max limit", a.max_limit as f64, 200.0);
    at_least("aimd p99 over unloaded", a.p99_ratio, 4.0);
}

#[test]
fn silent_drops_with_a_client_timeout() {
    const NAME: &str = "drops-timeout";
    let all = figures(NAME);
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    meets_goal(NAME, Ctl::Aimd, of(&all, Ctl::Aimd));
    meets_goal(NAME, Ctl::Vegas, of(&all, Ctl::Vegas));
}

#[test]
fn log_normal_latency_with_a_heavy_tail() {
    const NAME: &str = "lognormal-tail";
    let all = figures(NAME);
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    meets_goal(NAME, Ctl::Aimd, of(&all, Ctl::Aimd));
    // Vegas reads the noise of the tail as a queue and collapses.
    at_most("vegas goodput", of(&all, Ctl::Vegas).goodput, 0.3);
}

#[test]
fn capacity_halved_then_doubled() {
    const NAME: &str = "halve-then-double";
    let all = figures(NAME);
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    // AIMD's +1 per round trip takes ~33 round trips to climb back 50 → 100.
    let a = of(&all, Ctl::Aimd);
    at_least("aimd round trips", a.rtts_to_capacity.unwrap(), 25.0);
    at_least("aimd goodput", a.goodput, 0.85);
}

#[test]
fn load_below_capacity_does_not_run_away() {
    const NAME: &str = "low-load";
    let s = scenario(NAME);
    let all = figures(NAME);
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    // About 24 calls in flight are needed (200/s × 120 ms). A backlog built
    // while the limit was 5 lifts every limit at first; the gradient
    // controller then settles back towards 1.5 × the demand it sees, the
    // others keep what the backlog taught them, but none runs to its max.
    // Goodput counts the calls offered after the warm-up: the backlog
    // drained after it read as more than the load (1.115) before.
    for (ctl, f) in &all {
        at_least(&format!("{} goodput", ctl.name()), f.goodput, 0.98);
        at_most(&format!("{} goodput", ctl.name()), f.goodput, 1.0);
        assert_eq!(f.overload_rate, 0.0);
        if *ctl != Ctl::Windowed {
            at_most(
                &format!("{} max limit", ctl.name()),
                f.max_limit as f64,
                160.0,
            );
        }
    }
    // The windowed rules grow +2 a window while answers are fast, demand
    // or not: they run away (the preset stops at its max of 50).
    at_least(
        "windowed max limit",
        of(&all, Ctl::Windowed).max_limit as f64,
        200.0,
    );
    at_most(
        "gradient max limit",
        of(&all, Ctl::Gradient).max_limit as f64,
        4.0 * s.nominal(),
    );
}

#[test]
fn two_clients_share_fairly() {
    const NAME: &str = "two-clients";
    let all = figures(NAME);
    // AIMD's fairness read 0.97 until its growth stopped at a third above
    // the demand (0.88 since, in this one seeded run: the cap bound twice
    // at the start, while the callers were still arriving, and the clients'
    // starts drifted apart); the default controller keeps 0.97.
    for (ctl, fairness) in [(Ctl::Gradient, 0.9), (Ctl::Aimd, 0.85)] {
        meets_goal(NAME, ctl, of(&all, ctl));
        let f = of(&all, ctl);
        at_least(
            &format!("{} fairness", ctl.name()),
            f.fairness.unwrap(),
            fairness,
        );
    }
    // The windowed rules let the client that grew first keep the larger
    // share (both clients stopped at the preset's max of 50 before, which
    // read as fair).
    at_most(
        "windowed fairness",
        of(&all, Ctl::Windowed).fairness.unwrap(),
        0.8,
    );
}

#[test]
fn quota_with_a_long_retry_after_neither_collapses_nor_freezes() {
    const NAME: &str = "quota-long-retry-after";
    let all = figures(NAME);
    for (ctl, f) in &all {
        // The quota is used in full every window: not frozen.
        at_least(&format!("{} goodput", ctl.name()), f.goodput, 0.99);
        // Not collapsed: the hold answers a spent quota, not a cut.
        at_least(
            &format!("{} min limit", ctl.name()),
            f.min_limit as f64,
            40.0,
        );
    }
    // Once a window's quota is spent, the first 429 (Retry-After up to
    // 10 s) holds every new call until the window is over: only the few
    // calls already sent are refused. (Without the hold, each of the 200
    // callers got one 429 per window: 16.7 % of the attempts.)
    meets_goal(NAME, Ctl::Gradient, of(&all, Ctl::Gradient));
    for (ctl, f) in &all {
        at_most(&format!("{} overload", ctl.name()), f.overload_rate, 0.01);
    }
}

#[test]
fn batch_makespan_against_the_best_fixed_limit() {
    for name in ["cap-50-429", "queue-knee"] {
        let s = scenario(name);
        let (best, best_time) = best_fixed_makespan(&s, 500);
        let g = makespan(&s, Ctl::Gradient, 500).unwrap();
        let ratio = g.as_secs_f64() / best_time.as_secs_f64();
        println!("{name}: gradient {g:?}, best fixed ({best}) {best_time:?}: {ratio:.2}");
        at_most(&format!("{name} makespan over best fixed"), ratio, 1.6);
    }
}

#[test]
fn gradient_meets_the_goal_on_every_scenario() {
    for s in table() {
        meets_goal(s.name, Ctl::Gradient, &run(&s, Ctl::Gradient));
    }
}

/// The goal is no luck of the suite's seed where latency decides: the same
/// scenarios with other seeds for the downstream's latencies.
///
/// Not drops-timeout: with seed 8 its 1 % random drops (each a timeout, so an
/// overload) keep the limit near 25..30 (goodput 0.80); random loss is read
/// as congestion, as it was before.
#[test]
fn gradient_meets_the_goal_with_other_seeds() {
    for name in ["queue-knee", "lognormal-tail", "rate-20-retry-after"] {
        let s = scenario(name);
        for seed in [1, 2, 3, 4, 5, 6, 7, 8, 10_000] {
            let f = run_seeded(&s, Ctl::Gradient, seed);
            meets_goal(&format!("{name} (seed {seed})"), Ctl::Gradient, &f);
        }
    }
}

#[test]
fn runs_are_deterministic() {
    let s = scenario("lognormal-tail");
    assert_eq!(run(&s, Ctl::Gradient), run(&s, Ctl::Gradient));
}
