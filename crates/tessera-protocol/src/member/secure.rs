//! The member's secure-aggregation steps between the model and the update:
//! the graph draw (roster, reveal, neighbours' signed keys) and the
//! consistency check (sign the survivor set, reveal only after enough
//! neighbours signed the same set). Each step checks what the aggregator
//! forwards before the member's session uses it.

use std::collections::BTreeSet;

use tessera_core::{Advertisement, ClientMsg, NoisePlacement, PartyId, Shared, SharedList};

use super::{MemberRng, Output, Participant, PrivacyRefusal, Refusal, active};

impl<R: MemberRng> Participant<R> {
    /// `GraphRoster`: every member's graph commitment is now fixed, so the
    /// member reveals its own contribution to the graph seed.
    pub(super) fn on_graph_roster(
        &mut self,
        round: u64,
        roster: &SharedList<(PartyId, [u8; 32])>,
    ) -> Result<(), Refusal> {
        let kind = "graph_roster";
        let r = active(&mut self.round, round, kind)?;
        let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
        let reveal = session.on_shared_roster(roster)?;
        self.out.push_back(Output::Send(ClientMsg::RevealGraphSeed { round, reveal }));
        Ok(())
    }

    /// `CohortKeys`: every advertisement is checked (certificate, cohort
    /// entry, signature over keys and both commitments) before its keys are
    /// used; the session then draws the graph from every reveal and checks
    /// that these are exactly its neighbours.
    pub(super) fn on_cohort_keys(
        &mut self,
        round: u64,
        adverts: &[(PartyId, Shared<Advertisement>)],
        reveals: &SharedList<(PartyId, [u8; 32])>,
    ) -> Result<(), Refusal> {
        let kind = "cohort_keys";
        let r = active(&mut self.round, round, kind)?;
        let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
        let identity = self.identity.as_ref().ok_or(Refusal::NoIdentity)?;
        let binding = *session.context().binding();
        let mut keys = Vec::with_capacity(adverts.len());
        let mut verified = std::collections::BTreeMap::new();
        for (party, advert) in adverts {
            let message = tessera_secagg::advert_message(
                &binding,
                *party,
                &advert.keys,
                &advert.seed_commitment,
                &advert.graph_commitment,
            );
            let key = identity
                .verify_cached(&mut self.certificates, &r.cohort, *party, &message, advert)
                .map_err(|problem| Refusal::Advertisement { party: *party, problem })?;
            verified.insert(*party, key);
            keys.push((*party, advert.keys, advert.graph_commitment));
        }
        let shares = session.on_cohort_keys_shared(&keys, reveals, &mut self.rng)?;
        r.neighbour_keys = verified;
        self.out.push_back(Output::Send(ClientMsg::ShareKeys { round, shares }));
        Ok(())
    }

    /// `SurvivorSet`: signs the announced set, once, after its own masked
    /// input went out in full. Under distributed noise the set must hold at
    /// least the `min_contributors` this member's noise share was sized for
    /// (issue #18): the sum is over exactly this set, and the member reveals
    /// only once `t` neighbours signed it, so the aggregator is held to it.
    pub(super) fn on_survivor_set(&mut self, round: u64, survivors: &SharedList<PartyId>) -> Result<(), Refusal> {
        let kind = "survivor_set";
        let uploading = self.upload.as_ref().is_some_and(|u| u.round == round);
        let r = active(&mut self.round, round, kind)?;
        if !r.sent || uploading {
            return Err(Refusal::Unexpected { kind });
        }
        // Both units: the client unit's shares and the record unit's one-step
        // shares are sized for the same `min_contributors`.
        if let Some(dp) = &r.settings.dp
            && dp.noise == NoisePlacement::Distributed
        {
            let planned = dp.min_contributors.min(r.cohort.len() as u32);
            if (survivors.len() as u32) < planned {
                let survivors = survivors.len() as u32;
                return Err(PrivacyRefusal::NoiseFloor { survivors, planned }.into());
            }
        }
        let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
        let message = session.on_shared_survivor_set(survivors)?;
        let identity = self.identity.as_mut().ok_or(Refusal::NoIdentity)?;
        let signature = identity.sign(&message)?;
        self.out.push_back(Output::Send(ClientMsg::SignSurvivors { round, signature }));
        Ok(())
    }

    /// `UnmaskRequest`: checks forwarded signatures on the set this member
    /// signed under the neighbours' certificate keys, in order, until the
    /// signers and this member reach the threshold (what is left is not
    /// needed, and each check is an ECDSA verification); a signature that
    /// is checked and fails is refused by name. The session reveals only at
    /// the threshold.
    pub(super) fn on_unmask_request(&mut self, round: u64, signatures: &[(PartyId, Vec<u8>)]) -> Result<(), Refusal> {
        let kind = "unmask_request";
        let r = active(&mut self.round, round, kind)?;
        let session = r.secagg.as_mut().ok_or(Refusal::Unexpected { kind })?;
        let message = session.signed_survivor_message().ok_or(Refusal::Unexpected { kind })?.to_vec();
        let mut signers = BTreeSet::new();
        let needed = session.context().threshold().saturating_sub(1) as usize;
        for (party, signature) in signatures {
            if signers.len() >= needed {
                break;
            }
            let key = r.neighbour_keys.get(party).ok_or(Refusal::SurvivorSignature { party: *party })?;
            if !self.certificates.verifies(key, &message, signature) || !signers.insert(*party) {
                return Err(Refusal::SurvivorSignature { party: *party });
            }
        }
        let reveals = session.on_unmask_request(&signers)?;
        self.out.push_back(Output::Send(ClientMsg::UnmaskShares { round, reveals }));
        Ok(())
    }
}
