//! Near-duplicate clustering on a synthetic corpus, and the sybil property: splitting one's
//! data into near-duplicate records does not raise one's share of the rewards.

use openledger_core::Address;
use openledger_poa::quality::{
    ClusterShare, Clusters, MinHashConfig, cluster_near_duplicates, cluster_rewards,
};
use openledger_poa::rng::SeededStream;

const WORDS: [&str; 24] = [
    "protein",
    "binding",
    "enzyme",
    "kinase",
    "receptor",
    "signal",
    "pathway",
    "cell",
    "membrane",
    "ligand",
    "inhibitor",
    "dose",
    "trial",
    "patient",
    "response",
    "gene",
    "expression",
    "tissue",
    "marker",
    "assay",
    "result",
    "model",
    "sample",
    "effect",
];

fn sentence(s: &mut SeededStream, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[s.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A light edit: one word replaced and a trailing mark, as a sybil would do.
fn variant(text: &str, s: &mut SeededStream, v: usize) -> String {
    let mut words: Vec<String> = text.split(' ').map(String::from).collect();
    let at = s.below(words.len() as u64) as usize;
    words[at] = WORDS[s.below(WORDS.len() as u64) as usize].to_string();
    format!("{}{}", words.join(" "), ["", ".", "!", " ...", "?"][v % 5])
}

fn share(weights: &[(Address, f64)], who: Address) -> f64 {
    let total: f64 = weights.iter().map(|w| w.1).sum();
    weights.iter().find(|w| w.0 == who).map_or(0.0, |w| w.1) / total
}

#[test]
fn near_duplicates_cluster_and_distinct_records_do_not() {
    let mut s = SeededStream::new(1);
    let originals: Vec<String> = (0..300).map(|_| sentence(&mut s, 40)).collect();
    let mut texts = originals.clone();
    for (i, o) in originals.iter().enumerate().take(50) {
        texts.push(variant(o, &mut s, i));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let c = cluster_near_duplicates(&refs, &MinHashConfig::default()).unwrap();
    for i in 0..50 {
        assert_eq!(
            c.cluster_of[300 + i],
            c.cluster_of[i],
            "variant {i} joins its original"
        );
    }
    let groups = c.groups();
    assert_eq!(groups.len(), 300, "no two distinct originals are merged");
}

#[test]
fn splitting_data_into_near_duplicate_sybils_gains_nothing() {
    let mut s = SeededStream::new(2);
    let attacker = Address::repeat_byte(0xa7);
    let mut texts: Vec<String> = Vec::new();
    let mut who: Vec<Address> = Vec::new();
    let mut scores: Vec<f64> = Vec::new();
    for i in 0..100 {
        texts.push(sentence(&mut s, 40));
        who.push(Address::with_last_byte((i % 10) as u8));
        scores.push(0.5 + s.next_f64());
    }
    let original = sentence(&mut s, 40);
    let attacker_score = 1.2;
    let honest_texts: Vec<String> = texts.iter().cloned().chain([original.clone()]).collect();
    let honest_who: Vec<Address> = who.iter().copied().chain([attacker]).collect();
    let honest_scores: Vec<f64> = scores.iter().copied().chain([attacker_score]).collect();
    let cfg = MinHashConfig::default();
    let cluster = |t: &[String]| {
        cluster_near_duplicates(&t.iter().map(String::as_str).collect::<Vec<_>>(), &cfg).unwrap()
    };
    for policy in [ClusterShare::PerContributor, ClusterShare::FirstSubmitter] {
        let honest =
            cluster_rewards(&cluster(&honest_texts), &honest_who, &honest_scores, policy).unwrap();
        let base = share(&honest, attacker);
        // The attacker submits its record plus 9 near-duplicate copies, each scoring as high.
        let mut t = honest_texts.clone();
        let mut w = honest_who.clone();
        let mut sc = honest_scores.clone();
        for v in 0..9 {
            t.push(variant(&original, &mut s, v));
            w.push(attacker);
            sc.push(attacker_score);
        }
        let sybil = cluster_rewards(&cluster(&t), &w, &sc, policy).unwrap();
        let gain = share(&sybil, attacker) / base;
        assert!(gain <= 1.0 + 1e-12, "{policy:?}: gain {gain}");
        // Without clustering the same attack would pay about ten times over.
        let singletons = Clusters {
            cluster_of: (0..t.len()).collect(),
        };
        let naive = share(
            &cluster_rewards(&singletons, &w, &sc, policy).unwrap(),
            attacker,
        ) / base;
        assert!(naive > 5.0, "{naive}");
    }
}
