package openledger.mobile

import java.io.File
import kotlin.test.Test
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse

/** Bad input becomes a typed exception naming the culprit, never a crash. */
class BadInputTest {
    private val a1 = "0x" + "01".repeat(20)
    private val a2 = "0x" + "02".repeat(20)
    private val h = "0x" + "11".repeat(32)

    @Test
    fun `split arguments that cannot be read are InvalidArgument naming the field`() {
        val e = assertFailsWith<OpenLedgerException.InvalidArgument> {
            splitScores("100", listOf(ScoreShare("0x12zz", 1.0)), NegativeScores.CLIP, null)
        }
        assertContains(e.message!!, "scores[0].account")
        assertContains(
            assertFailsWith<OpenLedgerException.InvalidArgument> { splitScores("-5", listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null) }.message!!,
            "amount",
        )
        assertFailsWith<OpenLedgerException.InvalidArgument> { splitScores("1" + "0".repeat(80), listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { splitWeights("10", listOf(WeightShare(a1, "1.5")), null) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { splitScores("10", listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, "nope") }
    }

    @Test
    fun `split rule violations are their own exceptions`() {
        assertFailsWith<OpenLedgerException.InvalidArgument> { splitScores("10", listOf(ScoreShare(a1, Double.POSITIVE_INFINITY)), NegativeScores.CLIP, null) }
        assertFailsWith<OpenLedgerException.Split> { splitScores("10", listOf(ScoreShare(a1, -1.0), ScoreShare(a2, 1.0)), NegativeScores.REJECT, null) }
        assertFailsWith<OpenLedgerException.Split> { splitScores("10", listOf(ScoreShare(a1, 1.0), ScoreShare(a1, 2.0)), NegativeScores.CLIP, null) }
        assertFailsWith<OpenLedgerException.Split> { splitWeights("10", listOf(WeightShare(a1, "0")), null) }
        assertFailsWith<OpenLedgerException.Split> { splitBps("10", listOf(BpsShare(a1, 9_999u))) }
        assertFailsWith<OpenLedgerException.Split> {
            splitFee("10", a1, a2, 6_000u, 5_000u, listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null)
        }
    }

    @Test
    fun `Merkle input errors are typed`() {
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree(listOf(listOf("1")), listOf("uint257"), true) }
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree(listOf(listOf("1", "2")), listOf("uint256"), true) }
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree(listOf(listOf("not a number")), listOf("uint256"), true) }
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree(emptyList(), listOf("uint256"), true) }
        assertFailsWith<OpenLedgerException.Merkle> { MerkleTree(emptyList()) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { MerkleTree(listOf("0x1234")) }
        StandardMerkleTree(listOf(listOf("1"), listOf("2")), listOf("uint256"), true).use { tree ->
            assertFailsWith<OpenLedgerException.Merkle> { tree.proof(2u) }
            assertFailsWith<OpenLedgerException.Merkle> { tree.proof(ULong.MAX_VALUE) }
            assertFailsWith<OpenLedgerException.Merkle> { tree.multiProof(listOf(0uL, 0uL)) }
            assertFailsWith<OpenLedgerException.InvalidArgument> { tree.verify(0u, listOf("0xnothex")) }
            assertFalse(tree.verify(0u, listOf(h)))
        }
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree.load("{\"format\": \"standard-v1\"") }
        assertFailsWith<OpenLedgerException.Merkle> { StandardMerkleTree.load("{\"format\": \"other\", \"leafEncoding\": [], \"tree\": [], \"values\": []}") }
        MerkleTree(listOf(h, h.replace('1', '2'))).use { tree ->
            val m = tree.multiProof(listOf(0uL))
            assertFailsWith<OpenLedgerException.Merkle> { processMerkleMultiProof(m.copy(proofFlags = m.proofFlags + true)) }
            assertFalse(verifyMerkleMultiProof(tree.root(), m.copy(proofFlags = m.proofFlags + true)))
        }
    }

    private val receipt = AttributionReceipt(h, h, listOf(h), a1, "1000", 1uL, h)
    private val domain = ReceiptDomain(1uL, a2)

    @Test
    fun `receipt and key errors are typed`() {
        assertFailsWith<OpenLedgerException.InvalidArgument> { receiptStructHash(receipt.copy(payer = "0x01")) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { receiptStructHash(receipt.copy(adapterIds = listOf("0xabc"))) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { receiptSigningHash(receipt, domain.copy(verifyingContract = "contract")) }
        assertFailsWith<OpenLedgerException.Signature> { OperatorSigner("0x" + "00".repeat(32)) }
        assertFailsWith<OpenLedgerException.Signature> { OperatorSigner("0x" + "ff".repeat(32)) }
        assertFailsWith<OpenLedgerException.Signature> { recoverReceiptSigner(receipt, domain, "0x" + "11".repeat(64)) }
        assertFailsWith<OpenLedgerException.InvalidArgument> { recoverReceiptSigner(receipt, domain, "0xgg") }
        assertFailsWith<OpenLedgerException.InvalidArgument> { claimCalldata(1u, "x", a1, "1", emptyList()) }
        assertFailsWith<OpenLedgerException.Abi> { encodeContractCall("NoSuchContract", "claim", "[]") }
        assertFailsWith<OpenLedgerException.Abi> { encodeContractCall("AttributionRewards", "noSuchFunction", "[]") }
        assertFailsWith<OpenLedgerException.Abi> { encodeContractCall("AttributionRewards", "claim", "[\"1\"]") }
        assertFailsWith<OpenLedgerException.InvalidArgument> { encodeContractCall("AttributionRewards", "claim", "not json") }
    }

    @Test
    fun `adapter errors name the file or the tensor`() {
        val missing = File(Fixtures.adapters, "no-such-adapter").path
        assertContains(assertFailsWith<OpenLedgerException.NotFound> { LoraAdapter.fromDir(missing) }.message!!, "no-such-adapter")
        val dir = File(Fixtures.adapters, "qv-r4")
        val config = File(dir, "adapter_config.json").readBytes()
        val weights = File(dir, "adapter_model.safetensors").readBytes()
        assertFailsWith<OpenLedgerException.AdapterFormat> { LoraAdapter.fromBytes(config, weights.copyOf(weights.size / 2)) }
        assertFailsWith<OpenLedgerException.AdapterFormat> { LoraAdapter.fromBytes("{ not json".toByteArray(), weights) }
        assertFailsWith<OpenLedgerException.AdapterFormat> { LoraAdapter.fromBytes(config, ByteArray(3)) }
        assertFailsWith<OpenLedgerException.NotFound> { BaseModel.fromDir(missing) }
    }

    @Test
    fun `model errors are typed and leave the model usable`() {
        assertFailsWith<OpenLedgerException.NotFound> { OnDeviceModel.fromDir(File(Fixtures.repo, "no-such-model").path) }
        OnDeviceModel.fromDir(Fixtures.tinyLlama.path).use { model ->
            LoraAdapter.fromDir(File(Fixtures.adapters, "qv-r4").path).use { model.attachAdapter("qv", it) }
            val e = assertFailsWith<OpenLedgerException.UnknownId> { model.generate("qv-r8", listOf(1u), 1u) }
            assertContains(e.message!!, "qv-r8")
            assertFailsWith<OpenLedgerException.State> {
                LoraAdapter.fromDir(File(Fixtures.adapters, "attn-patterns").path).use { model.attachAdapter("qv", it) }
            }
            assertFailsWith<OpenLedgerException.InvalidArgument> { model.generate(null, emptyList(), 1u) }
            assertFailsWith<OpenLedgerException.InvalidArgument> { model.forward("qv", listOf(1u, 320u)) }
            assertFailsWith<OpenLedgerException.ModelFormat> { model.generateText(null, "hello", 1u) }
            assertFailsWith<OpenLedgerException.ModelFormat> { model.setTokenizer("{}".toByteArray()) }
            assertEquals(listOf("qv"), model.adapterNames())
            assertEquals(3, model.generate("qv", listOf(1u, 5u), 3u).size)
        }
    }
}
