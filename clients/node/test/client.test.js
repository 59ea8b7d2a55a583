'use strict';
// Run by tests/test_node_client.py against a running stack: APEX_ADDRESS is the daemon,
// APEX_EXPECTED the JSON {prompt, max_tokens, token_ids} of transformers' greedy output.

const test = require('node:test');
const assert = require('node:assert');
const { ApexClient, status } = require('..');

const address = process.env.APEX_ADDRESS;
const expected = JSON.parse(process.env.APEX_EXPECTED || '{}');

function collect(stream) {
  return new Promise((resolve, reject) => {
    const messages = [];
    stream.on('data', (m) => messages.push(m));
    stream.on('error', reject);
    stream.on('end', () => resolve(messages));
  });
}

test('streams a greedy generation equal to transformers', async () => {
  const client = new ApexClient(address);
  try {
    const stream = client.generateStream(expected.prompt, {
      temperature: 0, max_tokens: expected.max_tokens, ignore_eos: true,
    });
    const messages = await collect(stream);
    const ids = messages.flatMap((m) => m.token_ids);
    assert.deepStrictEqual(ids, expected.token_ids);
    const last = messages[messages.length - 1];
    assert.strictEqual(last.finish_reason, 'FINISH_REASON_LENGTH');
    assert.strictEqual(last.usage.completion_tokens, expected.max_tokens);
    const unary = await client.generate(expected.prompt, { temperature: 0, max_tokens: expected.max_tokens, ignore_eos: true });
    assert.strictEqual(unary.text, messages.map((m) => m.text).join(''));
  } finally {
    client.close();
  }
});

test('aborts a running generation', async () => {
  const client = new ApexClient(address);
  try {
    const stream = client.generateStream([0, 5, 9, 100], { max_tokens: 1500, ignore_eos: true }, 'node-abort');
    let aborted = false;
    const messages = [];
    await new Promise((resolve, reject) => {
      stream.on('data', async (m) => {
        messages.push(m);
        if (!aborted) {
          aborted = true;
          assert.strictEqual(await client.abort('node-abort'), true);
        }
      });
      stream.on('error', reject);
      stream.on('end', resolve);
    });
    const last = messages[messages.length - 1];
    assert.strictEqual(last.finish_reason, 'FINISH_REASON_ABORTED');
    assert.ok(messages.flatMap((m) => m.token_ids).length < 1500);
    assert.strictEqual(await client.abort('node-abort'), false);
  } finally {
    client.close();
  }
});

test('bad input is INVALID_ARGUMENT naming the field', async () => {
  const client = new ApexClient(address);
  try {
    await assert.rejects(client.generate('hello', { top_p: 1.5 }), (err) => {
      assert.strictEqual(err.code, status.INVALID_ARGUMENT);
      assert.match(err.details, /^top_p:/);
      return true;
    });
  } finally {
    client.close();
  }
});
