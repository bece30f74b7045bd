//! Structure-aware targets over `tessera_protocol::fuzzing`: whole messages
//! and local results drawn with `Arbitrary`, so every input reaches the state
//! machines instead of dying in the codec.

use tessera_protocol::fuzzing::{CoordinatorInput, MemberInput};
use tessera_protocol::member::Output as MemberOut;
use tessera_protocol::{Participant, Policy};

use super::coordinator::{MEMBERS, coordinator_config};
use super::*;

/// Inputs per run: enough for a whole round, bounded so a run stays short.
const MAX_INPUTS: usize = 96;

/// A member under its default policy fed arbitrary messages and results.
/// Besides "no panic": it never streams a plaintext update (the policy
/// refuses plaintext rounds), and never answers before its hello.
pub fn member_inputs(data: &[u8]) {
    let Ok(inputs) = Vec::<MemberInput>::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let policy = Policy { max_model_values: 1 << 16, ..Policy::default() };
    let mut p = Participant::new(member_name(1), policy, ChaCha20Rng::seed_from_u64(1))
        .with_identity(identity(&member_name(1)));
    p.hello();
    let mut outputs: Vec<MemberOut> = std::iter::from_fn(|| p.poll_output()).collect();
    assert!(matches!(outputs.as_slice(), [MemberOut::Send(ClientMsg::Hello { .. })]), "{outputs:?}");
    for input in inputs.into_iter().take(MAX_INPUTS) {
        outputs = input.apply(&mut p);
        for out in &outputs {
            if let MemberOut::Send(msg) = out {
                assert!(
                    !matches!(msg, ClientMsg::PlainStart { .. } | ClientMsg::PlainChunk { .. }),
                    "plaintext update under the default policy: {msg:?}"
                );
            }
        }
    }
}

/// The coordinator (configured as the daemon configures it) fed arbitrary
/// connects, disconnects, messages and clock ticks from its four members.
/// Besides "no panic": the global model stays finite.
pub fn coordinator_inputs(data: &[u8]) {
    use tessera_protocol::coordinator::{CentralNoise, Coordinator, Resume};

    let Ok(inputs) = Vec::<CoordinatorInput>::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let noise = CentralNoise::reproducible(0);
    let Ok(mut coord) = Coordinator::new(coordinator_config(), tiny_model(0.0), None, Resume::default(), noise) else {
        panic!("the fixed coordinator config is valid")
    };
    let names: Vec<String> = (0..MEMBERS).map(member_name).collect();
    let mut now_ms = 0;
    for input in inputs.into_iter().take(MAX_INPUTS) {
        input.apply(&mut coord, &names, &mut now_ms);
        assert!(coord.global().tensors.iter().all(|t| t.data.iter().all(|v| v.is_finite())), "global model");
    }
}
