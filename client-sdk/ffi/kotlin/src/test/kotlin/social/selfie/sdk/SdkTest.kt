// The mobile SDK from Kotlin on the JVM: the UniFFI-generated bindings loading the real
// native library (libselfie_ffi) over JNA, against a real `selfie serve` started here.
package social.selfie.sdk

import java.io.File
import java.net.DatagramSocket
import java.net.ServerSocket
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance

/** Tokens kept in memory (an app keeps them in the Keystore or the Keychain). */
class MemoryTokens : TokenStore {
    @Volatile var tokens: AuthTokens? = null
    override fun load(): AuthTokens? = tokens
    override fun save(tokens: AuthTokens) { this.tokens = tokens }
    override fun clear() { tokens = null }
}

@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class SdkTest {
    private lateinit var edge: Process
    private lateinit var address: String
    private lateinit var pin: String
    private val log = StringBuffer()
    private var unique = System.nanoTime() % 1_000_000

    private fun freeUdpPort(): Int = DatagramSocket(0).use { it.localPort }
    private fun freeTcpPort(): Int = ServerSocket(0).use { it.localPort }

    @BeforeAll
    fun startEdge() {
        val bin = System.getenv("SELFIE_BIN") ?: fail("SELFIE_BIN: the selfie binary to test against")
        val dir = Files.createTempDirectory("selfie-kotlin-").toFile()
        val quic = freeUdpPort()
        edge = ProcessBuilder(
            bin, "serve",
            "--set", "server.data_dir=\"${dir.absolutePath}\"",
            "--set", "server.listen=\"127.0.0.1:$quic\"",
            "--set", "server.shards=2",
            "--set", "ops.listen=\"127.0.0.1:${freeTcpPort()}\"",
            // Room for the registrations this suite makes from one address.
            "--set", "auth.register_burst=1000",
            "--set", "auth.register_per_hour=100000",
        ).redirectErrorStream(true).start()
        val ready = java.util.concurrent.CountDownLatch(1)
        Thread {
            try {
                edge.inputStream.bufferedReader().forEachLine { line ->
                    log.append(line).append('\n')
                    Regex("listening on udp://(\\S+)").find(line)?.let { address = it.groupValues[1] }
                    Regex("certificate sha-256: ([0-9a-f]{64})").find(line)?.let {
                        pin = it.groupValues[1]
                        ready.countDown()
                    }
                }
            } catch (e: java.io.IOException) {
                // The edge was stopped.
            }
        }.apply { isDaemon = true }.start()
        if (!ready.await(60, TimeUnit.SECONDS)) {
            edge.destroyForcibly()
            fail<Unit>("selfie serve did not start:\n$log")
        }
    }

    @AfterAll
    fun stopEdge() {
        edge.destroy()
        if (!edge.waitFor(10, TimeUnit.SECONDS)) edge.destroyForcibly()
    }

    private fun config(dataDir: File? = null) = SelfieConfig(
        servers = listOf(address),
        certificateSha256 = pin,
        deviceId = "kotlin-test",
        dataDir = dataDir?.absolutePath,
    )

    private fun name(prefix: String): String = "${prefix}${unique++}"

    private fun post(text: String) = CreatePostRequest(
        text = text,
        audience = Audience.PUBLIC,
        replyPolicy = ReplyPolicy.EVERYONE,
    )

    @Test
    fun `register, log in, follow, post, read the feed and get it live`() = runBlocking {
        val anaTokens = MemoryTokens()
        val ana = SelfieClient.connect(config(), anaTokens)
        val ben = SelfieClient.connect(config(), MemoryTokens())
        val anaName = name("ana")
        val anaUser = ana.register(anaName, "$anaName@example.com", "$anaName correct horse battery")
        val benName = name("ben")
        val benUser = ben.register(benName, "$benName@example.com", "$benName correct horse battery")
        assertEquals(anaName, anaUser.username)
        assertEquals(anaUser.userId, ana.userId())
        assertNotNull(anaTokens.tokens?.accessToken, "the app's token store got the tokens")

        // Ben follows Ana and listens to his home feed, live.
        assertEquals(FollowState.FOLLOWING, ben.follow(anaUser.userId))
        val live = ben.subscribe(SubscriptionKind.HOME_FEED, 0UL, null)
        val created = ana.createPost(post("hello from Kotlin"))
        assertEquals("hello from Kotlin", created.text)
        val event = live.nextWithin(20_000UL) ?: fail("no live event:\n$log")
        val body = event.body
        assertTrue(body is Body.Feed, "a feed event: $body")
        val op = (body as Body.Feed).value.op
        assertTrue(op is FeedOp.FeedUpdate, "a feed update: $op")
        assertTrue((op as FeedOp.FeedUpdate).value.newItems >= 1u)
        live.cancel()

        // The home feed has the post; the typed table-driven call reaches any service.
        val page = ben.homeFeed(10u, null)
        assertEquals(created.postId, page.items?.firstOrNull()?.post?.postId)
        val answer = ben.users(UsersOp.GetProfileRequest(GetProfileRequest(userId = anaUser.userId)))
        val profile = (answer as UsersOp.GetProfileResponse).value.profile
        assertEquals(anaName, profile?.user?.username)
        assertEquals(true, profile?.relationship?.following)

        // A second device logs in; a wrong password is a typed error with the code.
        val phone = SelfieClient.connect(config(), MemoryTokens())
        val again = phone.login(anaName, "$anaName correct horse battery", null)
        assertEquals(anaUser.userId, again.userId)
        try {
            SelfieClient.connect(config(), MemoryTokens()).login(anaName, "wrong", null)
            fail<Unit>("a wrong password signed in")
        } catch (e: SelfieException.Server) {
            assertEquals(ErrorCode.INVALID_CREDENTIALS, e.code)
        }
        // Two calls in flight at once on one client.
        val a = async { ben.profile(anaUser.userId) }
        val b = async { ben.profile(benUser.userId) }
        assertEquals(anaName, a.await().user?.username)
        assertEquals(benName, b.await().user?.username)
        listOf(ana, ben, phone).forEach { it.disconnect(); it.close() }
    }

    @Test
    fun `writes queued offline survive a restart and are sent once`() = runBlocking {
        val dir = Files.createTempDirectory("selfie-device-").toFile()
        val tokens = MemoryTokens()
        val first = SelfieClient.connect(config(dir), tokens)
        val user = first.register(name("cam"), "${name("cam")}@example.com", "cam correct horse battery")
        val me = first.profile(user.userId)
        assertEquals(user.username, me.user?.username)
        for (i in 0 until 3) {
            first.queue(Body.Posts(Posts(op = PostsOp.CreatePostRequest(post("offline $i")))))
        }
        assertEquals(3UL, first.outboxLen())
        first.disconnect()
        first.close() // the app is killed; its store and tokens remain

        val second = SelfieClient.connect(config(dir), tokens)
        assertEquals(user.userId, second.userId(), "signed in from the saved tokens")
        assertEquals(user.username, second.cachedProfile(user.userId)?.user?.username)
        assertEquals(3UL, second.outboxLen())
        val sent = second.flushOutbox()
        assertEquals(3, sent.size)
        assertTrue(sent.all { it.refused == null }, "all accepted: $sent")
        assertTrue(second.flushOutbox().isEmpty(), "nothing is sent twice")
        val posts = second.posts(PostsOp.UserPostsRequest(UserPostsRequest(userId = user.userId)))
        val texts = (posts as PostsOp.PostsResponse).value.posts.orEmpty().mapNotNull { it.text }.sorted()
        assertEquals(listOf("offline 0", "offline 1", "offline 2"), texts)
        second.disconnect()
        second.close()
    }

    @Test
    fun `chat messages queued offline arrive once and the other device syncs them`() = runBlocking {
        val camDir = Files.createTempDirectory("selfie-cam-").toFile()
        val danDir = Files.createTempDirectory("selfie-dan-").toFile()
        val cam = SelfieClient.connect(config(camDir), MemoryTokens())
        val dan = SelfieClient.connect(config(danDir), MemoryTokens())
        val camName = name("cam")
        val danName = name("dan")
        val camUser = cam.register(camName, "$camName@example.com", "$camName correct horse battery")
        val danUser = dan.register(danName, "$danName@example.com", "$danName correct horse battery")
        cam.follow(danUser.userId)
        dan.follow(camUser.userId)
        val created = cam.chat(
            ChatOp.CreateConversationRequest(
                CreateConversationRequest(kind = ConversationKind.DIRECT, memberIds = listOf(danUser.userId)),
            ),
        )
        val conversation = (created as ChatOp.ConversationResponse).value.conversation
            ?: fail("no conversation")
        val id = conversation.conversationId
        cam.queueMessage(id, "m-1", "hello $danName")
        cam.queueMessage(id, "m-2", "second")
        assertEquals(2UL, cam.outboxLen())
        val sent = cam.flushOutbox()
        assertEquals(2, sent.size)
        assertTrue(sent.all { it.chat && it.refused == null }, "both delivered: $sent")
        assertTrue(cam.flushOutbox().isEmpty(), "each message is sent once")
        assertTrue(dan.syncChat() >= 2UL)
        val texts = dan.messages(id).mapNotNull { it.text }
        assertEquals(listOf("hello $danName", "second"), texts)
        assertEquals(0UL, dan.syncChat(), "nothing new on a second sync")
        // The sender's device holds its own messages too once it syncs.
        cam.syncChat()
        assertEquals(listOf("m-1", "m-2"), cam.messages(id).mapNotNull { it.clientMsgId })
        listOf(cam, dan).forEach { it.disconnect(); it.close() }
    }

    @Test
    fun `network changes, background and foreground keep the session usable`() = runBlocking {
        val client = SelfieClient.connect(config(), MemoryTokens())
        val user = client.register(name("dee"), "${name("dee")}@example.com", "dee correct horse battery")
        val before = client.localPort()
        client.networkChanged()
        assertFalse(before == client.localPort(), "a new socket")
        assertEquals(user.username, client.profile(user.userId).user?.username)
        assertTrue(client.isConnected())
        client.setForeground(false)
        assertFalse(client.isConnected(), "closed in the background")
        client.setForeground(true)
        assertTrue(client.isConnected(), "open again in the foreground")
        client.registerPushToken(PushPlatform.FCM, "fcm-token-${user.userId}")
        assertNull(client.cachedHomeFeedOrNull())
        client.logout()
        assertNull(client.userId())
        try {
            client.logout()
            fail<Unit>("logged out twice")
        } catch (e: SelfieException.NotSignedIn) {
        }
        client.disconnect()
        client.close()
    }

    private fun SelfieClient.cachedHomeFeedOrNull(): FeedPage? = try {
        cachedHomeFeed()
    } catch (e: SelfieException.Config) {
        null // no data_dir: no offline store
    }
}
