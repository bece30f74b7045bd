//! Iterate averaging (`[strategy] average_last`, issue #18): the coordinator
//! tells the server optimizer how many rounds are left, and the model it
//! releases after the last round is the mean of the last k global models.

use super::*;

/// Every round moves the global model by the same mean delta e, so the raw
/// global models after rounds 1, 2 and 3 are e, 2e and 3e. With
/// `average_last = 2` the run ends on (2e + 3e) / 2; without it, on 3e.
#[test]
fn the_released_model_is_the_mean_of_the_last_rounds_models() {
    let run = |average_last| {
        let mut c = cfg(3, true);
        c.rounds = 3;
        c.strategy = StrategyConfig::FedAvg { server_lr: 1.0, average_last };
        let mut h = Harness::new(5, c);
        h.connect_all();
        h.run(20);
        assert!(h.coord.is_finished());
        assert_eq!(h.finished.len(), 3, "aborted: {:?}", h.aborted);
        h
    };
    assert_global(&run(None), 3, &[0, 1, 2, 3, 4], 1e-5);
    let h = run(Some(2));
    let e = expected_mean(&[0, 1, 2, 3, 4]);
    for v in h.coord.global().values() {
        assert!((v - 2.5 * e).abs() < 1e-5, "released {v}, want the mean of 2e and 3e = {}", 2.5 * e);
    }
}
