// Reads a consumer group as operators' tools see it, with kafkajs (a Kafka
// client that is not ours): the groups the cluster lists, and the group's
// committed offsets on one topic. Prints one JSON object on stdout.
//
//   node offsets.js BROKER GROUP TOPIC
//
// Exits 1 with the error on stderr when the broker cannot answer.
'use strict';

const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const [broker, groupId, topic] = process.argv.slice(2);
  if (!broker || !groupId || !topic) {
    throw new Error('usage: node offsets.js BROKER GROUP TOPIC');
  }
  const kafka = new Kafka({
    clientId: 'catlog-live-test-kafkajs',
    brokers: [broker],
    logLevel: logLevel.NOTHING,
    connectionTimeout: 3000,
    requestTimeout: 5000,
    retry: { retries: 2 },
  });
  const admin = kafka.admin();
  await admin.connect();
  try {
    const { groups } = await admin.listGroups();
    const fetched = await admin.fetchOffsets({ groupId, topics: [topic] });
    const offsets = {};
    for (const t of fetched) {
      if (t.topic !== topic) continue;
      for (const p of t.partitions) {
        offsets[p.partition] = Number(p.offset);
      }
    }
    process.stdout.write(JSON.stringify({ groups, offsets }) + '\n');
  } finally {
    await admin.disconnect();
  }
}

main().catch((error) => {
  process.stderr.write(`kafkajs: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
