// uniCloud cloud function: writes an answer to the client's channel, word by word.
// Each write carries a writer id + seq, so a retried request is stored once.
const { deserializeChannel } = require('unbroken-channel')

exports.main = async (event) => {
  const channel = deserializeChannel(event.channel)
  const words = `You asked: ${event.prompt}. Here is a streamed answer, one word at a time.`.split(' ')
  try {
    for (const word of words) {
      await channel.write({ text: word + ' ' })
      await new Promise((r) => setTimeout(r, 100))
    }
    await channel.end({ words: words.length })
  } catch (err) {
    await channel.error(err)
  }
  return { ok: true }
}
