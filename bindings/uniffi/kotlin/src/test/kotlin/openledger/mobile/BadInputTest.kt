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
        val e = assertFailsWith<SplitException.InvalidArgument> {
            splitScores("100", listOf(ScoreShare("0x12zz", 1.0)), NegativeScores.CLIP, null)
        }
        assertContains(e.message!!, "scores[0].account")
        assertContains(
            assertFailsWith<SplitException.InvalidArgument> { splitScores("-5", listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null) }.message!!,
            "amount",
        )
        assertFailsWith<SplitException.InvalidArgument> { splitScores("1" + "0".repeat(80), listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null) }
        assertFailsWith<SplitException.InvalidArgument> { splitWeights("10", listOf(WeightShare(a1, "1.5")), null) }
        assertFailsWith<SplitException.InvalidArgument> { splitScores("10", listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, "nope") }
    }

    @Test
    fun `split rule violations are their own exceptions`() {
        assertFailsWith<SplitException.NonFiniteScore> { splitScores("10", listOf(ScoreShare(a1, Double.POSITIVE_INFINITY)), NegativeScores.CLIP, null) }
        assertFailsWith<SplitException.NegativeScore> { splitScores("10", listOf(ScoreShare(a1, -1.0), ScoreShare(a2, 1.0)), NegativeScores.REJECT, null) }
        assertFailsWith<SplitException.DuplicateAccount> { splitScores("10", listOf(ScoreShare(a1, 1.0), ScoreShare(a1, 2.0)), NegativeScores.CLIP, null) }
        assertFailsWith<SplitException.ZeroTotalWeight> { splitWeights("10", listOf(WeightShare(a1, "0")), null) }
        assertFailsWith<SplitException.BasisPoints> { splitBps("10", listOf(BpsShare(a1, 9_999u))) }
        assertFailsWith<SplitException.BasisPoints> {
            splitFee("10", a1, a2, 6_000u, 5_000u, listOf(ScoreShare(a1, 1.0)), NegativeScores.CLIP, null)
        }
    }

    @Test
    fun `Merkle input errors are typed`() {
        assertFailsWith<MerkleException.InvalidLeafType> { StandardMerkleTree(listOf(listOf("1")), listOf("uint257"), true) }
        assertFailsWith<MerkleException.InvalidValue> { StandardMerkleTree(listOf(listOf("1", "2")), listOf("uint256"), true) }
        assertFailsWith<MerkleException.InvalidValue> { StandardMerkleTree(listOf(listOf("not a number")), listOf("uint256"), true) }
        assertFailsWith<MerkleException.EmptyTree> { StandardMerkleTree(emptyList(), listOf("uint256"), true) }
        assertFailsWith<MerkleException.EmptyTree> { MerkleTree(emptyList()) }
        assertFailsWith<MerkleException.InvalidArgument> { MerkleTree(listOf("0x1234")) }
        StandardMerkleTree(listOf(listOf("1"), listOf("2")), listOf("uint256"), true).use { tree ->
            assertFailsWith<MerkleException.IndexOutOfBounds> { tree.proof(2u) }
            assertFailsWith<MerkleException.IndexOutOfBounds> { tree.proof(ULong.MAX_VALUE) }
            assertFailsWith<MerkleException.InvalidMultiProof> { tree.multiProof(listOf(0uL, 0uL)) }
            assertFailsWith<MerkleException.InvalidArgument> { tree.verify(0u, listOf("0xnothex")) }
            assertFalse(tree.verify(0u, listOf(h)))
        }
        assertFailsWith<MerkleException.InvalidDump> { StandardMerkleTree.load("{\"format\": \"standard-v1\"") }
        assertFailsWith<MerkleException.InvalidDump> { StandardMerkleTree.load("{\"format\": \"other\", \"leafEncoding\": [], \"tree\": [], \"values\": []}") }
        MerkleTree(listOf(h, h.replace('1', '2'))).use { tree ->
            val m = tree.multiProof(listOf(0uL))
            assertFailsWith<MerkleException.InvalidMultiProof> { processMerkleMultiProof(m.copy(proofFlags = m.proofFlags + true)) }
            assertFalse(verifyMerkleMultiProof(tree.root(), m.copy(proofFlags = m.proofFlags + true)))
        }
    }

    private val receipt = AttributionReceipt(h, h, listOf(h), a1, "1000", 1uL, h)
    private val domain = ReceiptDomain(1uL, a2)

    @Test
    fun `receipt and key errors are typed`() {
        assertFailsWith<ChainException.InvalidArgument> { receiptStructHash(receipt.copy(payer = "0x01")) }
        assertFailsWith<ChainException.InvalidArgument> { receiptStructHash(receipt.copy(adapterIds = listOf("0xabc"))) }
        assertFailsWith<ChainException.InvalidArgument> { receiptSigningHash(receipt, domain.copy(verifyingContract = "contract")) }
        assertFailsWith<ChainException.Signature> { OperatorSigner("0x" + "00".repeat(32)) }
        assertFailsWith<ChainException.Signature> { OperatorSigner("0x" + "ff".repeat(32)) }
        assertFailsWith<ChainException.Signature> { recoverReceiptSigner(receipt, domain, "0x" + "11".repeat(64)) }
        assertFailsWith<ChainException.InvalidArgument> { recoverReceiptSigner(receipt, domain, "0xgg") }
        assertFailsWith<ChainException.InvalidArgument> { claimCalldata(1u, "x", a1, "1", emptyList()) }
        assertFailsWith<ChainException.InvalidArgument> { encodeContractCall("NoSuchContract", "claim", "[]") }
        assertFailsWith<ChainException.InvalidArgument> { encodeContractCall("AttributionRewards", "noSuchFunction", "[]") }
        assertFailsWith<ChainException.InvalidArgument> { encodeContractCall("AttributionRewards", "claim", "[\"1\"]") }
        assertFailsWith<ChainException.InvalidArgument> { encodeContractCall("AttributionRewards", "claim", "not json") }
    }

    @Test
    fun `adapter errors name the file or the tensor`() {
        val missing = File(Fixtures.adapters, "no-such-adapter").path
        assertContains(assertFailsWith<AdapterException.Io> { LoraAdapter.fromDir(missing) }.message!!, "no-such-adapter")
        val dir = File(Fixtures.adapters, "qv-r4")
        val config = File(dir, "adapter_config.json").readBytes()
        val weights = File(dir, "adapter_model.safetensors").readBytes()
        assertFailsWith<AdapterException.Format> { LoraAdapter.fromBytes(config, weights.copyOf(weights.size / 2)) }
        assertFailsWith<AdapterException.Format> { LoraAdapter.fromBytes("{ not json".toByteArray(), weights) }
        assertFailsWith<AdapterException.Format> { LoraAdapter.fromBytes(config, ByteArray(3)) }
        assertFailsWith<AdapterException.Io> { BaseModel.fromDir(missing) }
    }

    @Test
    fun `model errors are typed and leave the model usable`() {
        assertFailsWith<ModelException.Io> { OnDeviceModel.fromDir(File(Fixtures.repo, "no-such-model").path) }
        OnDeviceModel.fromDir(Fixtures.tinyLlama.path).use { model ->
            LoraAdapter.fromDir(File(Fixtures.adapters, "qv-r4").path).use { model.attachAdapter("qv", it) }
            val e = assertFailsWith<ModelException.UnknownAdapter> { model.generate("qv-r8", listOf(1u), 1u) }
            assertContains(e.message!!, "qv-r8")
            assertFailsWith<ModelException.DuplicateAdapter> {
                LoraAdapter.fromDir(File(Fixtures.adapters, "attn-patterns").path).use { model.attachAdapter("qv", it) }
            }
            assertFailsWith<ModelException.InvalidInput> { model.generate(null, emptyList(), 1u) }
            assertFailsWith<ModelException.InvalidInput> { model.forward("qv", listOf(1u, 320u)) }
            assertFailsWith<ModelException.Tokenizer> { model.generateText(null, "hello", 1u) }
            assertFailsWith<ModelException.Tokenizer> { model.setTokenizer("{}".toByteArray()) }
            assertEquals(listOf("qv"), model.adapterNames())
            assertEquals(3, model.generate("qv", listOf(1u, 5u), 3u).size)
        }
    }
}
