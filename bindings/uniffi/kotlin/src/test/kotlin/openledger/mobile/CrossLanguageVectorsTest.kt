package openledger.mobile

import com.google.gson.JsonObject
import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/**
 * Replays bindings/vectors/cross_language.json through the Kotlin bindings: every split, tree,
 * proof, receipt hash, signature, calldata and adapter fact equals what the Rust crates computed,
 * string for string.
 */
class CrossLanguageVectorsTest {
    private val v = Fixtures.vectors

    private fun payouts(a: com.google.gson.JsonArray) = a.map { Payout(it.obj().str("account"), it.obj().str("amount")) }

    private fun scores(c: JsonObject) = c.getAsJsonArray("scores").map {
        ScoreShare(it.obj().str("account"), f64Bits(it.obj().str("score_bits")))
    }

    private fun negative(c: JsonObject) =
        if (c.getAsJsonObject("policy").str("negative") == "clip") NegativeScores.CLIP else NegativeScores.REJECT

    /**
     * The payouts of a split, or the check that it throws the error of the vector's kind: rule
     * violations are `Split`, unusable input (NaN, nothing to split) `InvalidArgument`.
     */
    private fun outcome(c: JsonObject, run: () -> List<Payout>) {
        val expected = c.getAsJsonObject("expected")
        if (expected.has("error")) {
            val e = assertFailsWith<OpenLedgerException> { run() }
            val kind = when (expected.str("error")) {
                "NonFinite", "Empty" -> OpenLedgerException.InvalidArgument::class
                else -> OpenLedgerException.Split::class
            }
            assertEquals(kind, e::class, c.str("name"))
            assertEquals(expected.str("message"), e.message, c.str("name"))
        } else {
            val got = run()
            assertEquals(payouts(expected.getAsJsonArray("payouts")), got, c.str("name"))
            assertEquals(c.str("amount").toBigInteger(), got.sumOf { it.amount.toBigInteger() })
        }
    }

    @Test
    fun `reward splits equal the Rust vectors to the wei`() {
        val cases = v.getAsJsonArray("splits").map { it.obj() }
        for (c in cases) {
            val amount = c.str("amount")
            when (c.str("kind")) {
                "scores" -> outcome(c) {
                    splitScores(amount, scores(c), negative(c), c.getAsJsonObject("policy").optStr("fallback"))
                }
                "weights" -> outcome(c) {
                    splitWeights(amount, c.getAsJsonArray("weights").map { WeightShare(it.obj().str("account"), it.obj().str("weight")) }, c.optStr("fallback"))
                }
                "bps" -> outcome(c) {
                    splitBps(amount, c.getAsJsonArray("bps").map { BpsShare(it.obj().str("account"), it.obj().get("bps").asInt.toUShort()) })
                }
                "fee" -> {
                    val r = splitFee(
                        amount, c.str("owner"), c.str("protocol"),
                        c.get("protocol_bps").asInt.toUShort(), c.get("data_pool_bps").asInt.toUShort(),
                        scores(c), negative(c), c.getAsJsonObject("policy").optStr("fallback"),
                    )
                    val e = c.getAsJsonObject("expected")
                    assertEquals(Payout(c.str("owner"), e.str("owner")), r.owner)
                    assertEquals(Payout(c.str("protocol"), e.str("protocol")), r.protocol)
                    assertEquals(payouts(e.getAsJsonArray("payouts")), r.contributors)
                    val total = (listOf(r.owner, r.protocol) + r.contributors).sumOf { it.amount.toBigInteger() }
                    assertEquals(amount.toBigInteger(), total)
                }
                else -> error("unknown split kind ${c.str("kind")}")
            }
        }
        assertTrue(cases.size >= 40)
    }

    @Test
    fun `standard Merkle trees, proofs and multiproofs equal the Rust vectors`() {
        for (c in v.getAsJsonArray("standard_merkle").map { it.obj() }) {
            val encoding = c.strings("leaf_encoding")
            val values = c.getAsJsonArray("values").map { it.strings() }
            StandardMerkleTree(values, encoding, c.get("sort_leaves").asBoolean).use { tree ->
                val root = c.str("root")
                assertEquals(root, tree.root())
                assertEquals(c.strings("tree"), tree.tree())
                assertEquals(values.size.toULong(), tree.length())
                for ((i, proof) in c.getAsJsonArray("proofs").map { it.strings() }.withIndex()) {
                    assertEquals(proof, tree.proof(i.toULong()))
                    assertTrue(tree.verify(i.toULong(), proof))
                    assertTrue(verifyStandardProof(root, encoding, values[i], proof))
                    assertEquals(c.strings("leaf_hashes")[i], tree.leafHash(i.toULong()))
                    assertEquals(c.strings("leaf_hashes")[i], standardLeafHash(encoding, values[i]))
                }
                for (m in c.getAsJsonArray("multiproofs").map { it.obj() }) {
                    val got = tree.multiProof(m.getAsJsonArray("indices").map { it.asLong.toULong() })
                    val want = StandardMultiProof(
                        m.getAsJsonArray("leaves").map { it.strings() },
                        m.strings("proof"),
                        m.getAsJsonArray("proof_flags").map { it.asBoolean },
                    )
                    assertEquals(want, got)
                    assertTrue(verifyStandardMultiProof(root, encoding, want))
                }
                StandardMerkleTree.load(tree.dump()).use { assertEquals(root, it.root()) }
            }
        }
    }

    @Test
    fun `core Merkle trees, proofs and multiproofs equal the Rust vectors`() {
        for (c in v.getAsJsonArray("core_merkle").map { it.obj() }) {
            val leaves = c.strings("leaves")
            MerkleTree(leaves).use { tree ->
                assertEquals(c.str("root"), tree.root())
                assertEquals(c.strings("tree"), tree.nodes())
                for ((k, proof) in c.getAsJsonArray("proofs").map { it.strings() }.withIndex()) {
                    assertEquals(proof, tree.proof(k.toULong()))
                    assertEquals(c.str("root"), processMerkleProof(leaves[k], proof))
                    assertTrue(verifyMerkleProof(c.str("root"), leaves[k], proof))
                }
                for (m in c.getAsJsonArray("multiproofs").map { it.obj() }) {
                    val want = MerkleMultiProof(m.strings("leaves"), m.strings("proof"), m.getAsJsonArray("proof_flags").map { it.asBoolean })
                    assertEquals(want, tree.multiProof(m.getAsJsonArray("positions").map { it.asLong.toULong() }))
                    assertEquals(c.str("root"), processMerkleMultiProof(want))
                    assertTrue(verifyMerkleMultiProof(c.str("root"), want))
                }
            }
        }
    }

    private fun receipt(r: JsonObject) = AttributionReceipt(
        r.str("inference_id"), r.str("model_id"), r.strings("adapter_ids"), r.str("payer"),
        r.str("amount"), r.str("epoch").toULong(), r.str("weights_hash"),
    )

    @Test
    fun `EIP-712 receipts hash, sign and recover as in Rust`() {
        for (c in v.getAsJsonArray("receipts").map { it.obj() }) {
            val r = receipt(c.getAsJsonObject("receipt"))
            val domain = ReceiptDomain(c.get("chain_id").asLong.toULong(), c.str("verifying_contract"))
            val weights = c.getAsJsonArray("weights").map { AttributionWeight(it.obj().str("id"), it.obj().str("weight")) }
            if (weights.isNotEmpty()) assertEquals(r.weightsHash, attributionWeightsHash(weights))
            assertEquals(c.str("struct_hash"), receiptStructHash(r))
            assertEquals(c.str("domain_separator"), receiptDomainSeparator(domain))
            assertEquals(c.str("signing_hash"), receiptSigningHash(r, domain))
            OperatorSigner(c.str("secret")).use { signer ->
                assertEquals(c.str("signer"), signer.address())
                assertEquals(c.str("signature"), signer.sign(r, domain))
            }
            assertEquals(c.str("signer"), recoverReceiptSigner(r, domain, c.str("signature")))
            assertTrue(verifyReceipt(r, domain, c.str("signature"), c.str("signer")))
            // The same signature over another amount names someone else.
            assertTrue(!verifyReceipt(r.copy(amount = "1"), domain, c.str("signature"), c.str("signer")))
        }
    }

    @Test
    fun `claim and payment calldata equal the Rust encoding`() {
        val calls = v.getAsJsonArray("abi").map { it.obj() }
        val claim = calls.single { it.str("function").startsWith("claim(") }
        val a = claim.getAsJsonArray("args").map { it.obj().get("value") }
        assertEquals(
            claim.str("calldata"),
            claimCalldata(a[0].str().toULong(), a[1].str(), a[2].str(), a[3].str(), a[4].strings()),
        )
        val pay = calls.single { it.str("function").startsWith("payForInference(") }
        val t = pay.getAsJsonArray("args")[0].obj().getAsJsonArray("value")
        val r = AttributionReceipt(t[0].str(), t[1].str(), t[2].strings(), t[3].str(), t[4].str(), t[5].str().toULong(), t[6].str())
        val sig = pay.getAsJsonArray("args")[1].obj().str("value")
        assertEquals(pay.str("calldata"), payForInferenceCalldata(r, sig))
    }

    @Test
    fun `every contract call encodes to the Rust calldata by name and by signature`() {
        for (c in v.getAsJsonArray("abi").map { it.obj() }) {
            val args = com.google.gson.JsonArray().apply { c.getAsJsonArray("args").forEach { add(it.obj().get("value")) } }.toString()
            val name = c.str("function").substringBefore('(')
            assertEquals(c.str("calldata"), encodeContractCall(c.str("contract"), name, args), c.str("name"))
            assertEquals(c.str("calldata"), encodeContractCall(c.str("contract"), c.str("function"), args), c.str("name"))
            assertTrue(c.str("calldata").startsWith(c.str("selector")))
        }
    }

    @Test
    fun `adapter facts of the shipped PEFT adapters equal the Rust vectors`() {
        BaseModel.fromDir(Fixtures.tinyLlama.path).use { base ->
            for (c in v.getAsJsonArray("adapters").map { it.obj() }) {
                val dir = File(Fixtures.repo, c.str("path"))
                val fromBytes = LoraAdapter.fromBytes(
                    File(dir, "adapter_config.json").readBytes(),
                    File(dir, "adapter_model.safetensors").readBytes(),
                )
                for (adapter in listOf(LoraAdapter.fromDir(dir.path), fromBytes)) {
                    adapter.use {
                        assertEquals(c.get("r").asLong.toULong(), it.r())
                        assertEquals(c.get("lora_alpha").asDouble, it.loraAlpha())
                        assertEquals(c.get("use_rslora").asBoolean, it.useRslora())
                        assertEquals(c.get("use_dora").asBoolean, it.useDora())
                        assertEquals(c.get("module_count").asLong.toULong(), it.moduleCount())
                        assertEquals(c.get("resident_bytes").asLong.toULong(), it.residentBytes())
                        val want = c.getAsJsonArray("modules").map { m ->
                            val o = m.obj()
                            LoraModuleInfo(
                                o.str("name"), o.get("rank").asLong.toULong(), o.get("in_features").asLong.toULong(),
                                o.get("out_features").asLong.toULong(), f32Bits(o.str("scale_bits")),
                            )
                        }
                        assertEquals(want, it.modules())
                        val report = base.validate(it)
                        val validation = c.getAsJsonObject("validation")
                        assertTrue(validation.get("ok").asBoolean)
                        assertEquals(validation.get("modules_checked").asLong.toULong(), report.modulesChecked)
                        assertEquals(validation.strings("targeted_without_weights"), report.targetedWithoutWeights)
                    }
                }
            }
        }
    }

    @Test
    fun `datanet record hashes and proofs verify as in Rust`() {
        val c = v.getAsJsonObject("datanet")
        val jsonl = c.getAsJsonArray("jsonl").map { it.asString }
        for (version in c.getAsJsonArray("versions").map { it.obj() }) {
            val root = version.str("root")
            version.getAsJsonArray("records").forEachIndexed { i, r ->
                val rec = r.obj()
                val content = com.google.gson.JsonParser.parseString(jsonl[i]).asJsonObject.str("content")
                assertEquals(rec.str("hash"), recordHash(content))
                val proof = rec.strings("proof")
                assertTrue(verifyRecordProof(root, rec.str("hash"), proof))
                assertTrue(!verifyRecordProof(root, recordHash(content + "!"), proof))
            }
        }
        assertFailsWith<OpenLedgerException.InvalidArgument> { verifyRecordProof("0x12", recordHash("x"), emptyList()) }
    }

    @Test
    fun `training-log usage proofs verify as in Rust`() {
        val c = v.getAsJsonObject("usage_proofs")
        for (p in c.getAsJsonArray("proofs").map { it.obj() }) {
            val proof = hexBytes(p.str("proof"))
            assertEquals(p.get("step").asLong.toULong(), verifyUsageProof(proof, p.str("record"), c.str("head")))
            assertEquals(null, verifyUsageProof(proof, p.str("record"), c.str("other_head")))
            assertFailsWith<OpenLedgerException.Integrity> {
                verifyUsageProof(proof.copyOf(proof.size - 1), p.str("record"), c.str("head"))
            }
        }
    }

    private fun hexBytes(s: String): ByteArray =
        s.removePrefix("0x").chunked(2).map { it.toInt(16).toByte() }.toByteArray()
}
