//! Near-duplicate clustering on a synthetic corpus, and the sybil properties: splitting one's
//! data into near-duplicate records does not raise one's share of the rewards, and copying
//! someone else's records under other addresses earns nothing and costs them nothing.

use openledger_core::Address;
use openledger_poa::quality::{
    ClusterShare, Clusters, CopyFlag, MinHashConfig, cluster_near_duplicates, cluster_rewards,
    flag_copies,
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
    for policy in [ClusterShare::PerContributor, ClusterShare::FirstCommitted] {
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

#[test]
fn copying_someone_elses_records_under_many_addresses_earns_nothing() {
    let mut s = SeededStream::new(3);
    let alice = Address::repeat_byte(0xa1);
    let mut texts: Vec<String> = Vec::new();
    let mut who: Vec<Address> = Vec::new();
    for i in 0..60 {
        texts.push(sentence(&mut s, 30));
        // Records 0..20 are alice's; the rest belong to five others.
        who.push(if i < 20 {
            alice
        } else {
            Address::with_last_byte(i as u8 % 5)
        });
    }
    let scores: Vec<f64> = (0..60).map(|_| 0.1 + s.next_f64()).collect();
    let cfg = MinHashConfig::default();
    let cluster = |t: &[String]| {
        cluster_near_duplicates(&t.iter().map(String::as_str).collect::<Vec<_>>(), &cfg).unwrap()
    };
    let honest = cluster_rewards(
        &cluster(&texts),
        &who,
        &scores,
        ClusterShare::FirstCommitted,
    )
    .unwrap();
    for n in [1usize, 3, 10] {
        // n sybil addresses each submit a lightly edited copy of every one of alice's records
        // (each copy scoring as high as its original), after her.
        let sybils: Vec<Address> = (0..n)
            .map(|k| Address::repeat_byte(0xc0 + k as u8))
            .collect();
        let (mut t, mut w, mut sc) = (texts.clone(), who.clone(), scores.clone());
        for (k, &sybil) in sybils.iter().enumerate() {
            for i in 0..20 {
                t.push(variant(&texts[i], &mut s, k));
                w.push(sybil);
                sc.push(scores[i]);
            }
        }
        let c = cluster(&t);
        let paid = cluster_rewards(&c, &w, &sc, ClusterShare::FirstCommitted).unwrap();
        assert_eq!(paid, honest, "{n} copiers: every weight as without them");
        // Every copy is flagged, as a copy of alice's record.
        let flags = flag_copies(&c, &w).unwrap();
        assert_eq!(flags.len(), 20 * n);
        for (j, f) in flags.iter().enumerate() {
            let (k, i) = (j / 20, j % 20);
            assert_eq!(
                *f,
                CopyFlag {
                    index: 60 + j,
                    contributor: sybils[k],
                    original: i,
                    owner: alice,
                }
            );
        }
        // Shared per contributor instead, the copiers would take n/(n+1) of alice's rewards.
        let per = cluster_rewards(&c, &w, &sc, ClusterShare::PerContributor).unwrap();
        let alice_before: f64 = honest.iter().find(|x| x.0 == alice).unwrap().1;
        let taken: f64 = per
            .iter()
            .filter(|x| sybils.contains(&x.0))
            .map(|x| x.1)
            .sum();
        let expected = alice_before * n as f64 / (n + 1) as f64;
        assert!(
            (taken - expected).abs() < 1e-9 * alice_before,
            "{taken} vs {expected}"
        );
    }
    // A cluster must be named by its first record.
    let bad = Clusters {
        cluster_of: vec![1, 1],
    };
    assert!(flag_copies(&bad, &[alice, alice]).is_err());
    assert!(
        flag_copies(
            &Clusters {
                cluster_of: vec![0]
            },
            &[]
        )
        .is_err()
    );
}
