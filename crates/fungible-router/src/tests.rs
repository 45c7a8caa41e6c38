use std::collections::BTreeMap;

use super::*;
use crate::calibrate::{self, Point};

const CHEAP: &str = "local/small";
const STRONG: &str = "openai/large";

fn targets() -> Vec<String> {
    vec![CHEAP.to_owned(), STRONG.to_owned()]
}

/// A deterministic stream of numbers in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Requests of two kinds told apart by their embedding's direction: "hard" ones (a third)
/// that only the strong target answers well, and easy ones both answer. Labels are right
/// nine times in ten.
fn fixture(n: usize, seed: u64) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| {
            let hard = rng.next() < 0.33;
            let mut embedding: Vec<f32> = (0..8).map(|_| rng.next() - 0.5).collect();
            embedding[0] = if hard { 1.5 } else { -1.5 } + rng.next() - 0.5;
            let noisy = |good: bool, rng: &mut Lcg| if (rng.next() < 0.9) == good { 1.0 } else { 0.0 };
            let labels = BTreeMap::from([
                (CHEAP.to_owned(), noisy(!hard, &mut rng)),
                (STRONG.to_owned(), noisy(true, &mut rng)),
            ]);
            Sample { key: format!("item-{i}"), embedding, shape: Shape { chars: 40, tools: false, turns: 1 }, labels }
        })
        .collect()
}

#[test]
fn each_kind_learns_a_pattern_and_beats_random_mixing() {
    let samples = fixture(600, 1);
    for kind in Kind::ALL {
        let options = TrainOptions { kinds: vec![kind], ..TrainOptions::default() };
        let (router, report) = train(&targets(), &[1.0, 10.0], &samples, &options).expect("trains");
        let r = report.chosen().expect("the kind trained");
        assert_eq!(r.kind, kind);
        let apgr = r.test_apgr.expect("a gap exists");
        assert!(apgr > 0.75, "{kind:?}: APGR {apgr} on a learnable pattern (random mixing is 0.5)");
        let share = r.cheapest_share_at_95.expect("reaches 95%");
        let random = report.random_cheapest_share_at_95.expect("a gap exists");
        assert!(share > random + 0.2, "{kind:?}: the cheap target serves {share} at 95%, random mixing {random}");
        // At the calibrated threshold the goal holds on requests the router never saw, give or
        // take the noise of a 20% split.
        assert!(r.test.quality >= 0.95 * report.test_quality[STRONG] - 0.05, "{r:?}");
        assert!(r.test.cheapest_share > 0.4, "{r:?}");
        // Easy and hard requests go where they should.
        let easy = router.decide(&[-1.5, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], Shape::default());
        let hard = router.decide(&[1.5, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], Shape::default());
        assert_eq!(easy.order, [0, 1], "{kind:?}: {easy:?}");
        assert_eq!(hard.order, [1, 0], "{kind:?}: {hard:?}");
    }
}

#[test]
fn the_kind_kept_is_the_better_on_validation_and_both_are_reported() {
    let (router, report) = train(&targets(), &[1.0, 10.0], &fixture(600, 2), &TrainOptions::default()).expect("trains");
    assert_eq!(report.kinds.len(), 2);
    assert_eq!(router.kind(), report.chosen);
    assert_eq!(router.threshold, report.threshold);
    assert_eq!(report.train + report.validation + report.test, 600);
    assert!(report.validation >= 80 && report.test >= 80, "{report:?}");
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["kinds"][1]["kind"], "knn");
}

#[test]
fn too_few_labels_are_refused_naming_the_target() {
    let mut samples = fixture(600, 3);
    for s in samples.iter_mut().skip(40) {
        s.labels.remove(STRONG);
    }
    let error = train(&targets(), &[1.0, 10.0], &samples, &TrainOptions::default()).expect_err("refused");
    match &error {
        TrainError::TooFewLabels { target, need: 50, .. } => assert_eq!(target, STRONG),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().starts_with("too few labels for openai/large: "), "{error}");
}

#[test]
fn feedback_on_one_target_trains_but_cannot_calibrate_alone() {
    // Only partial labels: every sample trains, none can be held out.
    let mut samples = fixture(300, 4);
    for (i, s) in samples.iter_mut().enumerate() {
        s.labels.remove(if i % 2 == 0 { CHEAP } else { STRONG });
    }
    let error = train(&targets(), &[1.0, 10.0], &samples, &TrainOptions::default()).expect_err("refused");
    assert_eq!(error, TrainError::TooFewHeldOut { validation: 0, test: 0, need: 20 });
    assert_eq!(
        train(&targets()[..1], &[1.0], &samples, &TrainOptions::default()).expect_err("one target"),
        TrainError::TooFewTargets(1)
    );
}

#[test]
fn a_cost_goal_keeps_the_validation_cost_within_budget() {
    let options = TrainOptions { goal: Goal::MaxCost(4.0), kinds: vec![Kind::Logistic], ..TrainOptions::default() };
    let (_, report) = train(&targets(), &[1.0, 10.0], &fixture(600, 5), &options).expect("trains");
    let r = report.chosen().expect("trained");
    // About a third are hard and worth the strong target: 0.67 × 1 + 0.33 × 10 ≈ 4.
    assert!(r.test.cost <= 4.6, "{r:?}");
    assert!(r.test.quality > report.test_quality[CHEAP] + 0.15, "{r:?} vs {:?}", report.test_quality);
}

#[test]
fn a_router_round_trips_through_json_and_a_corrupt_one_is_refused() {
    let (router, _) = train(&targets(), &[1.0, 10.0], &fixture(300, 6), &TrainOptions::default()).expect("trains");
    let json = router.to_json();
    let back = Router::from_json(&json).expect("reads back");
    let x = [0.9, 0.2, -0.1, 0.0, 0.3, 0.0, 0.1, 0.0];
    assert_eq!(back.decide(&x, Shape::default()), router.decide(&x, Shape::default()));
    let mut value: serde_json::Value = serde_json::from_str(&json).expect("json");
    value["dims"] = serde_json::json!(9);
    assert!(Router::from_json(&value.to_string()).expect_err("refused").contains("do not fit"));
    assert!(Router::from_json("{\"targets\": []}").expect_err("refused").starts_with("not a router: "));
}

#[test]
fn the_pick_is_the_cheapest_target_that_clears_else_the_best() {
    let costs = [3.0, 1.0, 10.0];
    assert_eq!(calibrate::pick(&[0.9, 0.8, 0.95], &costs, 0.7), [1, 2, 0]);
    assert_eq!(calibrate::pick(&[0.9, 0.6, 0.95], &costs, 0.7), [0, 2, 1]);
    assert_eq!(calibrate::pick(&[0.5, 0.6, 0.4], &costs, 0.7), [1, 0, 2], "none clears: the best-scored");
    assert_eq!(calibrate::pick(&[], &[], 0.7), Vec::<usize>::new());
}

#[test]
fn apgr_is_a_half_for_random_mixing_and_one_for_a_perfect_router() {
    let point = |cost: f64, quality: f64| Point { threshold: 0.0, cost, quality, cheapest_share: 0.0 };
    let random: Vec<Point> = (0..=10).map(|i| f64::from(i) / 10.0).map(|p| point(1.0 + 9.0 * p, 0.6 + 0.3 * p)).collect();
    let value = apgr(&random, (1.0, 0.6), (10.0, 0.9)).expect("a gap");
    assert!((value - 0.5).abs() < 0.01, "{value}");
    let perfect = [point(1.0, 0.6), point(1.5, 0.9), point(10.0, 0.9)];
    assert!(apgr(&perfect, (1.0, 0.6), (10.0, 0.9)).expect("a gap") > 0.95);
    assert_eq!(apgr(&perfect, (1.0, 0.9), (10.0, 0.6)), None, "the dearer target is not better: no gap");
}

#[test]
fn request_text_is_the_last_user_message_cut_to_the_limit() {
    use fungible_types::{Message, Role};
    let messages = vec![
        Message::text(Role::System, "be brief"),
        Message::text(Role::User, "é".repeat(600)),
        Message::text(Role::Assistant, "ok"),
    ];
    assert_eq!(request_text(&messages).chars().count(), MAX_TEXT_CHARS);
    let shape = Shape::of(&messages, true);
    assert_eq!(shape, Shape { chars: 610, tools: true, turns: 3 });
}

#[test]
fn a_nearest_neighbour_router_keeps_at_most_its_cap_of_points() {
    // 14,000 samples: 60% train, more than the 8,000 points a router keeps.
    let samples = fixture(14_000, 7);
    let options = TrainOptions { kinds: vec![Kind::Knn], ..TrainOptions::default() };
    let (router, report) = train(&targets(), &[1.0, 10.0], &samples, &options).expect("trains");
    assert!(report.train > 8_000, "{}", report.train);
    assert_eq!(router.points(), Some(8_000));
}
