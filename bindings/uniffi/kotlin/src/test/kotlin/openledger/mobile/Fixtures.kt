package openledger.mobile

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import java.io.File

/** Paths of the repository's fixtures (the build passes the repository root as `openledger.repo`). */
object Fixtures {
    val repo: File = File(System.getProperty("openledger.repo") ?: "../../..").canonicalFile
    val tinyLlama: File = File(repo, "fixtures/peft/tiny-llama")
    val adapters: File = File(tinyLlama, "adapters")

    fun json(relative: String): JsonObject = JsonParser.parseString(File(repo, relative).readText()).asJsonObject

    val vectors: JsonObject by lazy { json("bindings/vectors/cross_language.json") }
}

fun JsonElement.str(): String = asString

fun JsonElement.arr(): JsonArray = asJsonArray

fun JsonElement.obj(): JsonObject = asJsonObject

fun JsonElement.strings(): List<String> = asJsonArray.map { it.asString }

fun JsonObject.strings(key: String): List<String> = get(key).strings()

fun JsonObject.str(key: String): String = get(key).asString

/** A JSON string or null. */
fun JsonObject.optStr(key: String): String? = get(key)?.takeUnless { it.isJsonNull }?.asString

/** An f64 from its `0x` + 16 hex digit bit pattern (exact, unlike decimal parsing). */
fun f64Bits(bits: String): Double = java.lang.Double.longBitsToDouble(java.lang.Long.parseUnsignedLong(bits.removePrefix("0x"), 16))

/** An f32 from its `0x` + 8 hex digit bit pattern. */
fun f32Bits(bits: String): Float = java.lang.Float.intBitsToFloat(java.lang.Integer.parseUnsignedInt(bits.removePrefix("0x"), 16))
