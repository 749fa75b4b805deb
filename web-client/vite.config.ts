import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import react from '@vitejs/plugin-react';
import { type Plugin, defineConfig } from 'vite';

/** Subresource Integrity on every script and stylesheet tag of the built HTML. */
function integrity(): Plugin {
  return {
    name: 'peerbubble-integrity',
    apply: 'build',
    enforce: 'post',
    generateBundle(_options, bundle) {
      const html = bundle['index.html'];
      if (!html || html.type !== 'asset') throw new Error('index.html is missing from the bundle');
      const hashOf = (file: string): string | null => {
        const item = bundle[file];
        if (!item) return null;
        const data = item.type === 'chunk' ? item.code : item.source;
        return `sha384-${createHash('sha384').update(data).digest('base64')}`;
      };
      html.source = String(html.source).replace(
        /<(script|link)([^>]*?) (src|href)="\/([^"]+)"([^>]*)>/g,
        (tag, name: string, before: string, attr: string, file: string, after: string) => {
          const sri = hashOf(file);
          if (!sri) return tag;
          return `<${name}${before} ${attr}="/${file}" integrity="${sri}"${(before + after).includes('crossorigin') ? '' : ' crossorigin'}${after}>`;
        },
      );
    },
  };
}

/** web-manifest.json: the SHA-256 of every served file, for whoever wants to check what this server runs. */
function manifest(): Plugin {
  let outDir = 'dist';
  return {
    name: 'peerbubble-manifest',
    apply: 'build',
    configResolved(config) {
      outDir = config.build.outDir;
    },
    closeBundle() {
      const files: Record<string, string> = {};
      const walk = (dir: string) => {
        for (const name of readdirSync(dir).sort()) {
          const path = join(dir, name);
          if (statSync(path).isDirectory()) walk(path);
          else if (name !== 'web-manifest.json') {
            files[`/${relative(outDir, path).split('\\').join('/')}`] = createHash('sha256').update(readFileSync(path)).digest('hex');
          }
        }
      };
      walk(outDir);
      writeFileSync(join(outDir, 'web-manifest.json'), `${JSON.stringify({ algorithm: 'sha256', files }, null, 2)}\n`);
    },
  };
}

export default defineConfig({
  plugins: [react(), integrity(), manifest()],
  build: {
    target: 'es2022',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
  worker: { format: 'es' },
});
