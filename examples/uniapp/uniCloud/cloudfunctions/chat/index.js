// uniCloud cloud function: writes an answer to the client's channel, word by word, and stops as
// soon as the user presses Stop. Each write carries a writer id + seq, so a retried request is
// stored once. No global fetch is needed (uniCloud.httpclient or Node's http is used).
const { deserializeSSEChannel } = require('unbroken-channel') // uniCloud's name; = deserializeChannel

exports.main = async (event) => {
  const channel = deserializeSSEChannel(event.channel)
  // Watch for Stop: one idle request to the broker, no polling. `channel.cancelled` turns true.
  channel.waitCancelled().then(({ reason }) => console.log('cancelled by the user:', reason))
  const words = `You asked: ${event.prompt}. Here is a streamed answer, one word at a time.`.split(' ')
  try {
    for (const word of words) {
      if (channel.cancelled) break // stop generating (and paying for tokens) at once
      await channel.write({ text: word + ' ' })
      await new Promise((r) => setTimeout(r, 100))
    }
    if (!channel.cancelled) await channel.end({ words: words.length })
  } catch (err) {
    // A write refused because of a cancel is not an error to report.
    if (err.code !== 'channel_cancelled') await channel.error(err)
  } finally {
    channel.close() // ends the cancel watch
  }
  return { ok: true, cancelled: channel.cancelled }
}
