// Copies the built files of the UI's npm libraries (pinned by package-lock.json) into
// ui/vendor/, byte for byte, with their licences and a manifest of versions and SHA-256
// sums. The copies are committed: building the app needs neither node nor the network.
// `node vendor.mjs --check` fails when ui/vendor/ differs from what node_modules holds
// (run `npm ci --offline` first: the lock file's integrity hashes pin the tarballs).
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, 'ui', 'vendor');

// package -> [file in the package, name in ui/vendor]
const FILES = {
  '@xterm/xterm': [['lib/xterm.mjs', 'xterm.mjs'], ['css/xterm.css', 'xterm.css'], ['LICENSE', 'xterm.LICENSE']],
  '@xterm/addon-fit': [['lib/addon-fit.mjs', 'addon-fit.mjs'], ['LICENSE', 'addon-fit.LICENSE']],
  'uplot': [['dist/uPlot.esm.js', 'uPlot.esm.js'], ['dist/uPlot.min.css', 'uPlot.min.css'], ['LICENSE', 'uPlot.LICENSE']],
};

const check = process.argv.includes('--check');
const lock = JSON.parse(readFileSync(join(here, 'package-lock.json'), 'utf8'));
const manifest = { note: 'written by desktop/vendor.mjs; do not edit', packages: {} };
let differs = 0;
for (const [pkg, files] of Object.entries(FILES)) {
  const dir = join(here, 'node_modules', pkg);
  const version = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
  const locked = lock.packages[`node_modules/${pkg}`];
  if (!locked || locked.version !== version) {
    throw new Error(`${pkg} ${version} in node_modules, ${locked?.version} in package-lock.json: run npm ci`);
  }
  const entry = { version, integrity: locked.integrity, files: {} };
  for (const [from, to] of files) {
    const bytes = readFileSync(join(dir, from));
    entry.files[to] = createHash('sha256').update(bytes).digest('hex');
    const dest = join(out, to);
    if (check) {
      if (!existsSync(dest) || !readFileSync(dest).equals(bytes)) {
        console.error(`ui/vendor/${to} differs from ${pkg}/${from}`);
        differs++;
      }
    } else {
      mkdirSync(out, { recursive: true });
      writeFileSync(dest, bytes);
    }
  }
  manifest.packages[pkg] = entry;
}
const text = JSON.stringify(manifest, null, 2) + '\n';
if (check) {
  const path = join(out, 'MANIFEST.json');
  if (!existsSync(path) || readFileSync(path, 'utf8') !== text) { console.error('ui/vendor/MANIFEST.json is stale'); differs++; }
  if (differs) { console.error('run: npm ci --offline && npm run vendor'); process.exit(1); }
  console.log('ui/vendor matches package-lock.json');
} else {
  writeFileSync(join(out, 'MANIFEST.json'), text);
  console.log(`ui/vendor written from ${Object.keys(FILES).length} packages`);
}
