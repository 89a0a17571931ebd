// encode_ref.js — the reference side of tests/test_bpe.sh: encodes texts
// with the JavaScript GPT-2 encoder of the npm package gpt-3-encoder and
// prints [{"text": ..., "ids": [...]}, ...] as JSON on stdout.
// Texts: every string of a .json file (an array of strings), and the label
// and text fields (2 and 4) of every line of a .tsv task file.
// Usage: node encode_ref.js PACKAGE_DIR FILE...
'use strict';
const fs = require('fs');
const path = require('path');

const [pkg, ...files] = process.argv.slice(2);
if (!pkg || files.length === 0) {
  console.error('usage: node encode_ref.js PACKAGE_DIR FILE...');
  process.exit(2);
}
const { encode } = require(path.resolve(pkg));

const texts = [];
for (const file of files) {
  const data = fs.readFileSync(file, 'utf-8');
  if (file.endsWith('.json')) {
    texts.push(...JSON.parse(data));
  } else {
    for (const line of data.split('\n')) {
      const f = line.split('\t');
      if (f.length === 4) texts.push(f[1], f[3]);
    }
  }
}
process.stdout.write(JSON.stringify(texts.map((text) => ({ text, ids: encode(text) }))));
