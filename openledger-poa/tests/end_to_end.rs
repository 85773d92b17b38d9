//! The money path end to end: a datanet is indexed, an answer cites its records, relevance
//! becomes weights, the fee is split to the wei, recorded, batched into an epoch and settled
//! with carry-over into claim leaves.

use openledger_core::datanet::Datanet;
use openledger_core::{Address, B256, U256};
use openledger_poa::Result;
use openledger_poa::rag::{Embedder, RagIndex, RelevanceWeighting, Similarity, relevance_weights};
use openledger_poa::record::{AttributionMethod, AttributionRecord, Epoch, claim_leaves};
use openledger_poa::split::{CarryOverLedger, FeeSplit, SplitPolicy, ZeroWeightPolicy};

/// A deterministic bag-of-words embedder: each word adds 1 to a hashed coordinate.
struct HashingEmbedder(usize);

impl Embedder for HashingEmbedder {
    fn dim(&self) -> usize {
        self.0
    }
    fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.0];
        for w in text.split_whitespace() {
            let h = w
                .to_lowercase()
                .bytes()
                .fold(1469598103934665603u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(1099511628211)
                });
            v[(h % self.0 as u64) as usize] += 1.0;
        }
        Ok(v)
    }
}

#[test]
fn a_cited_answer_pays_contributors_exactly_through_epoch_claims() {
    let who = |i: u8| Address::repeat_byte(i);
    let lines: Vec<String> = [
        (
            1,
            "aspirin inhibits cyclooxygenase enzymes and reduces inflammation",
        ),
        (2, "ibuprofen is a nonsteroidal anti inflammatory drug"),
        (3, "the eiffel tower is in paris"),
        (
            1,
            "aspirin reduces the risk of heart attack in some patients",
        ),
    ]
    .iter()
    .map(|(c, t)| {
        format!(
            r#"{{"content":"{t}","contributor":"{}","license":"CC-BY-4.0"}}"#,
            who(*c)
        )
    })
    .collect();
    let mut net = Datanet::new("pharma");
    net.import_jsonl(lines.join("\n").as_bytes()).unwrap();
    let version = net.commit().unwrap();
    let embedder = HashingEmbedder(4096);
    let mut index = RagIndex::new(4096, Similarity::Cosine).unwrap();
    let mut seen = 0;
    index
        .add_datanet(&net, &embedder, |done, _| seen = done)
        .unwrap();
    assert_eq!(seen, 4);
    let cites = index
        .search(
            &embedder
                .embed("how does aspirin reduce inflammation")
                .unwrap(),
            3,
        )
        .unwrap();
    assert_eq!(cites[0].contributor, who(1));
    assert!(
        cites.iter().all(|c| net.get(&c.record).is_some()),
        "citations name datanet records"
    );
    let weights =
        relevance_weights(&cites, RelevanceWeighting::Softmax { temperature: 0.2 }).unwrap();

    let fee = FeeSplit {
        owner: who(0xaa),
        protocol: who(0xbb),
        protocol_bps: 500,
        data_pool_bps: 7_500,
        policy: SplitPolicy {
            zero_total: ZeroWeightPolicy::Fallback(who(0xbb)),
            ..Default::default()
        },
    };
    let mut epoch = Epoch::new(1);
    let mut ledger = CarryOverLedger::new(U256::from(1_000u64));
    let mut total_fees = U256::ZERO;
    let mut paid_outside_epoch = U256::ZERO;
    for (i, amount) in [999_999_999_999_999_999u64, 7, 123_456_789]
        .into_iter()
        .enumerate()
    {
        let amount = U256::from(amount);
        total_fees += amount;
        let split = fee.split(amount, &weights).unwrap();
        assert_eq!(split.all().map(|p| p.amount).sum::<U256>(), amount);
        let pool: U256 = split.contributors.iter().map(|p| p.amount).sum();
        let rec = AttributionRecord::from_scores(
            B256::from(U256::from(i)),
            version.root,
            vec![B256::repeat_byte(0x11)],
            AttributionMethod::RagRelevance,
            &weights,
            &SplitPolicy::default(),
        )
        .unwrap();
        epoch.add(&rec, pool).unwrap();
        paid_outside_epoch += split.owner.amount + split.protocol.amount;
    }
    assert_eq!(epoch.pooled() + paid_outside_epoch, total_fees);
    let settlement = ledger.settle(&epoch.payouts()).unwrap();
    let paid: U256 = settlement.paid.iter().map(|p| p.amount).sum();
    assert_eq!(
        paid + ledger.pending_total().unwrap(),
        epoch.pooled(),
        "nothing vanishes below the minimum"
    );
    let leaves = claim_leaves(&settlement.paid).unwrap();
    assert!(leaves.windows(2).all(|w| w[0].account < w[1].account));
    assert_eq!(leaves.iter().map(|l| l.amount).sum::<U256>(), paid);
}
