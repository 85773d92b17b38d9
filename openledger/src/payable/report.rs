//! What the loop reports: every figure of every stage, serialisable to JSON (amounts as decimal
//! wei strings, hashes and addresses as 0x-hex).

use std::collections::BTreeMap;

use openledger_chain::deploy::{DeployConfig, Deployment};
use openledger_core::datanet::Datanet;
use openledger_core::{Address, B256, ContentId, U256};
use openledger_poa::quality::{Clusters, ParaphraseLink, flag_copies};
use serde::Serialize;

/// An amount of wei as a decimal string (JSON numbers cannot hold 256 bits).
pub fn wei(amount: U256) -> String {
    amount.to_string()
}

/// The whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// The chain's id.
    pub chain_id: u64,
    /// Contract addresses by name.
    pub contracts: BTreeMap<String, Address>,
    /// The base model the adapters are fine-tuned over (and how the RAG part is split:
    /// relevance on the random base, ContextCite on a pretrained one).
    pub base_model: String,
    /// Who is who (roles and contributors).
    pub accounts: BTreeMap<Address, String>,
    /// Stage 1.
    pub datanet: Option<DatanetReport>,
    /// Stage 2.
    pub adapters: Vec<AdapterReport>,
    /// Stage 2, after training: the records' influence on the validation set.
    pub validation: Option<ValidationReport>,
    /// Stage 2, after validation: every contributor's reputation, this run included.
    pub reputation: Vec<ReputationReport>,
    /// Stage 3.
    pub serving: Option<ServingReport>,
    /// Stages 3 and 4, per request.
    pub requests: Vec<RequestReport>,
    /// Stage 5.
    pub epoch: Option<EpochReport>,
    /// What an earlier process had already done on this deployment, found on the chain and
    /// not done again.
    pub resumed: Resumed,
    /// Wall-clock seconds per stage.
    pub seconds: BTreeMap<String, f64>,
}

/// What a run found already done on the chain by an earlier process on the same deployment (read
/// back from the contracts' logs and views) and did not do again; all zero on a fresh run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resumed {
    /// The datanet's registration and its version were found.
    pub datanet: bool,
    /// Adapters found registered (with the same artifact and training-log head).
    pub models: usize,
    /// Requests found paid (by their `InferencePaid` logs), in the epoch the logs name.
    pub payments: usize,
    /// The epoch's root was found posted.
    pub root: bool,
    /// Claims found made.
    pub claims: usize,
}

impl Report {
    pub(crate) fn new(
        chain_id: u64,
        d: &Deployment,
        c: &DeployConfig,
        datanet_owner: Address,
        payer: Address,
        relayer: Address,
    ) -> Self {
        let contracts = [
            ("TestToken", d.token),
            ("DatanetRegistry", d.datanets),
            ("ModelRegistry", d.models),
            ("InferencePayments", d.payments),
            ("AttributionRewards", d.rewards),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        let mut accounts = BTreeMap::new();
        for (a, n) in [
            (c.admin, "admin"),
            (c.treasury, "treasury"),
            (c.operator, "operator"),
            (c.poster, "epoch poster"),
            (datanet_owner, "datanet owner"),
            (payer, "payer"),
            (relayer, "claim relayer"),
        ] {
            accounts.insert(a, n.to_string());
        }
        Self {
            chain_id,
            contracts,
            accounts,
            ..Self::default()
        }
    }

    /// The name of `account` in this run, or its short hex form.
    pub fn name_of(&self, account: Address) -> String {
        self.accounts.get(&account).cloned().unwrap_or_else(|| {
            let h = account.to_string();
            format!("{}…{}", &h[..6], &h[h.len() - 4..])
        })
    }

    /// The report as indented JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Stage 1: the datanet as committed and registered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatanetReport {
    /// Its name.
    pub name: String,
    /// The on-chain id.
    pub id: String,
    /// The published version.
    pub version: u64,
    /// Merkle root of the version's records (as published).
    pub root: B256,
    /// Records.
    pub records: usize,
    /// Records per contributor, by address.
    pub contributors: BTreeMap<Address, usize>,
    /// Near-duplicate clusters with more than one record: record indices.
    pub near_duplicate_clusters: Vec<Vec<usize>>,
    /// Records left when each cluster keeps its first record.
    pub distinct_records: usize,
    /// The contributor with the most near-duplicate copies of their own records, if any.
    pub copier: Option<Address>,
    /// Every record that copies an earlier one (a later member of a near-duplicate cluster):
    /// neither trained on nor cited, so it earns nothing, whoever submitted it.
    pub copies: Vec<CopyReport>,
    /// What embedded the records (for RAG and paraphrase detection).
    pub embedder: String,
    /// Clusters joined because a record paraphrases another (sentence embeddings at or above
    /// the paraphrase threshold); 0 without a sentence model.
    pub paraphrases: usize,
    /// Training grants requested and approved on chain.
    pub grants: usize,
}

/// How the datanet's records were deduplicated, for its report.
pub(crate) struct Dedup<'a> {
    pub clusters: &'a Clusters,
    pub distinct: usize,
    pub embedder: String,
    pub paraphrases: &'a [ParaphraseLink],
}

impl DatanetReport {
    pub(crate) fn new(
        name: &str,
        datanet: &Datanet,
        id: U256,
        version: u64,
        dedup: Dedup<'_>,
        grants: usize,
    ) -> Result<Self, openledger_poa::PoaError> {
        let Dedup {
            clusters,
            distinct,
            embedder,
            paraphrases,
        } = dedup;
        let records = datanet.records();
        let who: Vec<Address> = records.iter().map(|r| r.contributor).collect();
        let flagged = flag_copies(clusters, &who)?
            .into_iter()
            .map(|f| CopyReport {
                record: f.index,
                contributor: f.contributor,
                original: f.original,
                owner: f.owner,
                paraphrase: paraphrases
                    .iter()
                    .find(|l| l.later == f.index)
                    .map(|l| l.cosine),
            })
            .collect();
        let mut contributors = BTreeMap::new();
        for r in records {
            *contributors.entry(r.contributor).or_default() += 1;
        }
        let groups: Vec<Vec<usize>> = clusters
            .groups()
            .into_iter()
            .filter(|g| g.len() > 1)
            .collect();
        let mut copies: BTreeMap<Address, usize> = BTreeMap::new();
        for g in &groups {
            let first = records[g[0]].contributor;
            let own = g
                .iter()
                .filter(|&&i| records[i].contributor == first)
                .count();
            *copies.entry(first).or_default() += own - 1;
        }
        let copier = copies
            .into_iter()
            .filter(|c| c.1 > 0)
            .max_by_key(|c| c.1)
            .map(|c| c.0);
        Ok(Self {
            name: name.into(),
            id: id.to_string(),
            version,
            root: datanet.versions().last().map_or(B256::ZERO, |v| v.root),
            records: records.len(),
            contributors,
            near_duplicate_clusters: groups,
            distinct_records: distinct,
            copier,
            copies: flagged,
            embedder,
            paraphrases: paraphrases.len(),
            grants,
        })
    }

    /// The copies grouped by who submitted them and whose records they copy:
    /// `((copier, owner), copies)`, in address order.
    pub fn copies_by_copier(&self) -> BTreeMap<(Address, Address), usize> {
        let mut by = BTreeMap::new();
        for c in &self.copies {
            *by.entry((c.contributor, c.owner)).or_default() += 1;
        }
        by
    }
}

/// A record flagged as a copy of an earlier record of the datanet.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CopyReport {
    /// The copy's record index.
    pub record: usize,
    /// Who submitted it.
    pub contributor: Address,
    /// The index of the record it copies (its cluster's first committed record).
    pub original: usize,
    /// Who submitted that record; the copy's own contributor when they copied themselves.
    pub owner: Address,
    /// When sentence embeddings (not MinHash) put the copy in its cluster: the cosine
    /// similarity that did.
    pub paraphrase: Option<f32>,
}

/// After fine-tuning: each trained record's influence on the validation set, and the records
/// flagged as harmful.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValidationReport {
    /// Gold answers measured.
    pub answers: usize,
    /// Records scored (the trained ones).
    pub records: usize,
    /// What a flagged record costs.
    pub policy: super::HarmPolicy,
    /// Robust standard deviations below the median a flagged record lies.
    pub z: f64,
    /// The records' median influence.
    pub median: f64,
    /// Records below this influence (and below 0) are flagged.
    pub threshold: f64,
    /// The flagged records, by index.
    pub flagged: Vec<HarmFlag>,
    /// How the flags did on the records planted as poison (`"poisoned": true` in their
    /// metadata), when there are any among the trained records and any others.
    pub planted: Option<PlantedCheck>,
}

/// A contributor's reputation: its validated history and the score that weights its shares.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReputationReport {
    /// The contributor.
    pub account: Address,
    /// Its name.
    pub name: String,
    /// Records accepted.
    pub accepted: u64,
    /// Records flagged as harmful.
    pub harmful: u64,
    /// Copies of others' records.
    pub copies: u64,
    /// The score its weights are multiplied by.
    pub score: f64,
}

/// A record flagged as harmful.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HarmFlag {
    /// Its datanet index.
    pub record: usize,
    /// Its contributor.
    pub contributor: Address,
    /// Its influence on the validation set (summed TracIn; negative: it made the gold answers
    /// less likely).
    pub influence: f64,
}

/// How the flags did on planted poison.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PlantedCheck {
    /// Planted records among the trained ones.
    pub planted: usize,
    /// Planted records flagged.
    pub caught: usize,
    /// Other records flagged.
    pub false_flags: usize,
    /// The AUC of the influence ranking (least helpful first) against the planted labels.
    pub auc: f64,
}

/// Stage 2: one fine-tuned, registered adapter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterReport {
    /// Its name.
    pub name: String,
    /// Its owner (who trained it under their grant and is paid the owner share).
    pub owner: Address,
    /// The on-chain model id.
    pub model_id: B256,
    /// Adapted modules.
    pub targets: Vec<String>,
    /// Rank.
    pub rank: usize,
    /// DoRA.
    pub dora: bool,
    /// Trainable parameters.
    pub parameters: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Share of the datanet's answers reproduced word for word (greedy).
    pub recall: f64,
    /// Seconds of training (and gradient features).
    pub train_seconds: f64,
    /// Head of the hash-chained training log (registered on chain).
    pub training_log_head: B256,
    /// Entries in the training log.
    pub training_log_entries: usize,
    /// keccak-256 of the PEFT adapter files (registered on chain).
    pub artifact_hash: B256,
    /// Fee per call.
    pub fee_wei: String,
    /// Gas of `registerModel`.
    pub register_gas: u64,
    /// The saved PEFT folder.
    pub dir: String,
}

/// Stage 3: the engine run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServingReport {
    /// Requests served.
    pub requests: usize,
    /// Adapters attached.
    pub adapters: usize,
    /// Engine steps until every request finished.
    pub engine_steps: usize,
    /// Sequences in the first step (all requests, every adapter: one mixed batch).
    pub first_step_sequences: usize,
    /// Seconds.
    pub seconds: f64,
}

/// A record's share of an answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Share {
    /// The record.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// Its text (start).
    pub text: String,
    /// Its share (of the answer's influence or of its citations).
    pub share: f64,
}

impl Share {
    pub(crate) fn new(record: ContentId, contributor: Address, text: &str, share: f64) -> Self {
        Self {
            record,
            contributor,
            text: text.chars().take(80).collect(),
            share,
        }
    }
}

/// One part of an answer's data pool: an attribution record (its weights split the part among
/// contributors) and the wei it carries. The receipt's `weightsHash` commits to the parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolPart {
    /// The attribution record's id.
    pub record: B256,
    /// How its weights were found (`"tracin"`, `"rag_relevance"`, `"context_cite"`).
    pub method: String,
    /// The model it attributes: a TracIn part, the adapter whose training records it pays (an
    /// ensemble's member); a RAG part, the answer's model (an ensemble's key).
    pub model: B256,
    /// Its part of the pool.
    pub amount_wei: String,
}

/// Stages 3–4: one request, its answer, attribution and payment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestReport {
    /// Index.
    pub index: usize,
    /// The adapter.
    pub adapter: String,
    /// The prompt.
    pub prompt: String,
    /// The answer.
    pub answer: String,
    /// Tokens generated (the end token included).
    pub tokens: usize,
    /// The inference id.
    pub inference_id: B256,
    /// The fee paid.
    pub fee_wei: String,
    /// The model owners' share (all members' owners, for an ensemble).
    pub owner_share_wei: String,
    /// The owners' share by adapter (an ensemble's members, split by weight as the contract
    /// credits it).
    pub owner_shares_wei: BTreeMap<String, String>,
    /// The protocol's share.
    pub protocol_share_wei: String,
    /// The contributors' pool.
    pub data_pool_wei: String,
    /// The pool's parts: for each adapter of the answer (each member of an ensemble, by
    /// weight) some training record helped, a TracIn part over its training records; then the
    /// RAG part.
    pub pool_parts: Vec<PoolPart>,
    /// What the receipt commits to: the attribution records and their parts of the pool.
    pub weights_hash: B256,
    /// The operator's EIP-712 signature.
    pub signature: String,
    /// Gas of `payForInference` (`payForEnsemble` for an ensemble); 0 when an earlier run paid
    /// it.
    pub pay_gas: u64,
    /// The most helpful training records (TracIn), with their share of the positive influence.
    pub top_influence: Vec<Share>,
    /// The cited records, with their share of the RAG part: relevance weights on the random
    /// base; on a pretrained base the records in the prompt, by ContextCite share, largest
    /// first.
    pub citations: Vec<Share>,
    /// The pool as split between contributors.
    pub contributors: BTreeMap<Address, String>,
    /// Debts charged by this answer to contributors of records flagged as harmful (under
    /// [`super::HarmPolicy::CarryNegative`]); settled when the epoch closes.
    pub harm_charged: BTreeMap<Address, String>,
}

impl RequestReport {
    pub(crate) fn served(
        index: usize,
        adapter: &str,
        prompt: &str,
        answer: &str,
        tokens: usize,
    ) -> Self {
        Self {
            index,
            adapter: adapter.into(),
            prompt: prompt.into(),
            answer: answer.into(),
            tokens,
            inference_id: B256::ZERO,
            fee_wei: String::new(),
            owner_share_wei: String::new(),
            owner_shares_wei: BTreeMap::new(),
            protocol_share_wei: String::new(),
            data_pool_wei: String::new(),
            pool_parts: Vec::new(),
            weights_hash: B256::ZERO,
            signature: String::new(),
            pay_gas: 0,
            top_influence: Vec::new(),
            citations: Vec::new(),
            contributors: BTreeMap::new(),
            harm_charged: BTreeMap::new(),
        }
    }
}

/// One contributor at the end of the epoch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContributorReport {
    /// The account.
    pub account: Address,
    /// Its name in the run.
    pub name: String,
    /// Records contributed.
    pub records: usize,
    /// Claimed with a Merkle proof.
    pub claimed_wei: String,
    /// Token balance after the claim.
    pub balance_wei: String,
    /// Proof length.
    pub proof_len: usize,
    /// Gas of the claim.
    pub claim_gas: u64,
    /// What the same answers would have paid it had the copies never been submitted.
    pub before_splitting_wei: Option<String>,
    /// What they would have paid it with no near-duplicate clustering.
    pub without_clustering_wei: Option<String>,
    /// Whether the balance moved by exactly the claimed amount.
    pub matches: bool,
}

/// The near-duplicate check of one contributor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NearDuplicateCheck {
    /// The contributor who submitted copies.
    pub account: Address,
    /// Its name.
    pub name: String,
    /// Paid (with clustering).
    pub paid_wei: String,
    /// Before splitting (adapters retrained without the copies).
    pub before_splitting_wei: String,
    /// With no clustering.
    pub without_clustering_wei: String,
    /// Whether the clustering kept exactly the records of the datanet before splitting (so
    /// the same adapters answered for both; otherwise they were trained again on it).
    pub same_training_set: bool,
    /// `paid <= before splitting`.
    pub holds: bool,
}

/// Stage 5: the settled epoch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochReport {
    /// The epoch.
    pub number: u64,
    /// The posted Merkle root of the claims.
    pub root: B256,
    /// The contract's data pool of the epoch.
    pub pool_wei: String,
    /// Sum of the claims (equal to the pool).
    pub claimed_total_wei: String,
    /// Gas of `postEpochRoot`.
    pub post_gas: u64,
    /// Every contributor.
    pub contributors: Vec<ContributorReport>,
    /// Owners' and treasury's withdrawals: account, name, amount.
    pub withdrawn: Vec<(Address, String, String)>,
    /// Tokens left in the rewards contract (0).
    pub rewards_left_wei: String,
    /// Tokens left in the payments contract (0).
    pub payments_left_wei: String,
    /// Every balance moved by exactly what was due, the root and pool read back.
    pub claims_match: bool,
    /// The near-duplicate check, with the counterfactual on.
    pub near_duplicates: Option<NearDuplicateCheck>,
    /// Debts charged this epoch to contributors of records flagged as harmful (under
    /// [`super::HarmPolicy::CarryNegative`]), by address.
    pub debts: Vec<DebtReport>,
}

/// A contributor's debt for the harm its flagged records did to this epoch's answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DebtReport {
    /// The contributor.
    pub account: Address,
    /// Its name.
    pub name: String,
    /// Charged by this epoch's answers.
    pub charged_wei: String,
    /// Taken out of its payout this epoch (and shared among those who owe nothing).
    pub taken_wei: String,
    /// Still owed: a negative balance carried to later epochs.
    pub carried_wei: String,
}
