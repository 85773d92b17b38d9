package openledger.mobile

import java.io.File
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue

/**
 * The tiny Llama runs on the device with its PEFT adapters and continues the reference prompts
 * greedily with exactly the tokens transformers + PEFT chose (fixtures/peft/tiny-llama/reference.json).
 */
class OnDeviceGenerationTest {
    private val reference = Fixtures.json("fixtures/peft/tiny-llama/reference.json")
    private val prompts = reference.getAsJsonArray("sequences").map { s -> s.arr().map { it.asInt.toUInt() } }
    private fun want(name: String, i: Int) = reference.getAsJsonObject("greedy").getAsJsonArray("$name.$i").map { it.asInt.toUInt() }

    private fun load(progress: MutableList<String>? = null): OnDeviceModel {
        val model = if (progress == null) {
            OnDeviceModel.fromDir(Fixtures.tinyLlama.path)
        } else {
            OnDeviceModel.fromDirWithProgress(
                Fixtures.tinyLlama.path,
                object : LoadListener {
                    override fun onProgress(stage: String, done: ULong, total: ULong) {
                        progress.add("$stage $done/$total")
                    }
                },
            )
        }
        for (name in listOf("qv-r4", "all-r8-rslora")) {
            LoraAdapter.fromDir(File(Fixtures.adapters, name).path).use { model.attachAdapter(name, it) }
        }
        // One adapter arrives as downloaded bytes.
        val dir = File(Fixtures.adapters, "attn-patterns")
        LoraAdapter.fromBytes(File(dir, "adapter_config.json").readBytes(), File(dir, "adapter_model.safetensors").readBytes())
            .use { model.attachAdapter("attn-patterns", it) }
        return model
    }

    @Test
    fun `greedy generation with each adapter equals the transformers and PEFT tokens`() {
        val progress = mutableListOf<String>()
        load(progress).use { model ->
            assertEquals(listOf("file 1/1", "layer 1/2", "layer 2/2"), progress)
            for (name in listOf("base", "qv-r4", "all-r8-rslora", "attn-patterns")) {
                val adapter = if (name == "base") null else name
                for ((i, prompt) in prompts.withIndex()) {
                    assertEquals(want(name, i), model.generate(adapter, prompt, 8u), "$name.$i")
                }
            }
        }
    }

    @Test
    fun `logits of the last position pick the first generated token`() {
        load().use { model ->
            val vocab = model.vocabSize().toInt()
            val prompt = prompts[0]
            val logits = model.forward("qv-r4", prompt)
            assertEquals(prompt.size * vocab, logits.size)
            val last = logits.subList((prompt.size - 1) * vocab, prompt.size * vocab)
            assertEquals(want("qv-r4", 0)[0], last.indices.maxBy { last[it] }.toUInt())
        }
    }

    @Test
    fun `streaming hands over each token and stops when asked`() {
        load().use { model ->
            val seen = mutableListOf<UInt>()
            val all = model.generateStreaming("all-r8-rslora", prompts[1], 8u, object : TokenListener {
                override fun onToken(index: UInt, token: UInt): Boolean {
                    assertEquals(seen.size.toUInt(), index)
                    seen.add(token)
                    return true
                }
            })
            assertEquals(want("all-r8-rslora", 1), all)
            assertEquals(all, seen)
            val firstThree = model.generateStreaming("all-r8-rslora", prompts[1], 8u, object : TokenListener {
                override fun onToken(index: UInt, token: UInt): Boolean = index < 2u
            })
            assertEquals(all.take(3), firstThree)
        }
    }

    /** A word-level tokenizer whose word "w<i>" is token i, so text and ids map one to one. */
    private fun wordTokenizer(): ByteArray {
        val vocab = (0 until 320).joinToString(", ") { "\"w$it\": $it" }
        return """{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": {$vocab}, "unk_token": "w0"}}""".toByteArray()
    }

    @Test
    fun `text generation goes through the tokenizer`() {
        load().use { model ->
            model.setTokenizer(wordTokenizer())
            val prompt = prompts[2].joinToString(" ") { "w$it" }
            assertEquals(prompts[2], model.encode(prompt, true))
            val text = model.generateText("attn-patterns", prompt, 8u)
            assertEquals(want("attn-patterns", 2).joinToString(" ") { "w$it" }, text)
            assertTrue(model.decode(listOf(1u, 2u), false).isNotEmpty())
        }
    }

    @Test
    fun `streamed text ends before the first stop string and is never taken back`() {
        load().use { model ->
            model.setTokenizer(wordTokenizer())
            val prompt = prompts[2].joinToString(" ") { "w$it" }
            val words = want("attn-patterns", 2).map { "w$it" }
            val whole = words.joinToString(" ")
            // A stop string over the 4th and 5th words: the answer is the text before it.
            val stop = " " + words[3] + " " + words[4]
            val pieces = mutableListOf<String>()
            val listener = object : TextListener {
                override fun onText(piece: String): Boolean {
                    pieces.add(piece)
                    assertTrue(whole.startsWith(pieces.joinToString("")))
                    return true
                }
            }
            val answer = model.generateTextStreaming("attn-patterns", prompt, 8u, listOf(stop), listener)
            assertEquals(whole.substring(0, whole.indexOf(stop)), answer)
            assertEquals(answer, pieces.joinToString(""))
            // Without stop strings it is generateText, streamed; a listener may stop it.
            val all = model.generateTextStreaming("attn-patterns", prompt, 8u, listOf(), object : TextListener {
                override fun onText(piece: String): Boolean = true
            })
            assertEquals(model.generateText("attn-patterns", prompt, 8u), all)
            val first = model.generateTextStreaming("attn-patterns", prompt, 8u, listOf(), object : TextListener {
                override fun onText(piece: String): Boolean = false
            })
            assertEquals(words[0], first)
            // A listener that said stop is not called again, even with text still waiting: the
            // first word's last character could begin this stop string, so it waits.
            var calls = 0
            val waits = words[0].last() + " never generated"
            val stopped = model.generateTextStreaming("attn-patterns", prompt, 8u, listOf(waits), object : TextListener {
                override fun onText(piece: String): Boolean {
                    calls += 1
                    assertEquals(words[0].dropLast(1), piece)
                    return false
                }
            })
            assertEquals(1, calls)
            assertEquals(words[0], stopped) // the answer includes what was waiting
            assertFailsWith<OpenLedgerException.InvalidArgument> {
                model.generateTextStreaming("attn-patterns", prompt, 8u, listOf(""), listener)
            }
        }
    }
}
