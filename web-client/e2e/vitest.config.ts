import { defineConfig } from 'vitest/config';

// The browser end-to-end tests: one real `peerbubble up` and one Chromium per file, members in separate
// browser contexts. Files run one after another (2 cores; each file already runs a server and a browser).
export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    root: new URL('..', import.meta.url).pathname,
    testTimeout: 240_000,
    hookTimeout: 180_000,
    fileParallelism: false,
    sequence: { concurrent: false },
    reporters: ['verbose'],
  },
});
