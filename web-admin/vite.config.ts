import { createHash } from 'node:crypto';
import react from '@vitejs/plugin-react';
import { type Plugin, defineConfig } from 'vite';

const BASE = '/admin/';

/** Subresource Integrity on every script and stylesheet tag of the built HTML. */
function integrity(): Plugin {
  return {
    name: 'peerbubble-integrity',
    apply: 'build',
    enforce: 'post',
    generateBundle(_options, bundle) {
      const html = bundle['index.html'];
      if (!html || html.type !== 'asset') throw new Error('index.html is missing from the bundle');
      html.source = String(html.source).replace(
        /<(script|link)([^>]*?) (src|href)="\/admin\/([^"]+)"([^>]*)>/g,
        (tag, name: string, before: string, attr: string, file: string, after: string) => {
          const item = bundle[file];
          if (!item) return tag;
          const data = item.type === 'chunk' ? item.code : item.source;
          const sri = `sha384-${createHash('sha384').update(data).digest('base64')}`;
          return `<${name}${before} ${attr}="${BASE}${file}" integrity="${sri}"${(before + after).includes('crossorigin') ? '' : ' crossorigin'}${after}>`;
        },
      );
    },
  };
}

export default defineConfig({
  base: BASE,
  plugins: [react(), integrity()],
  build: {
    target: 'es2022',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
});
