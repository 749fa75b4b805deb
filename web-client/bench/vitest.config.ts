import { defineConfig } from 'vitest/config';

// `cargo xtask bench browser`: not part of `cargo xtask test` (a benchmark, not a check).
export default defineConfig({
  test: {
    include: ['bench/**/*.test.ts'],
    root: new URL('..', import.meta.url).pathname,
    testTimeout: 1_200_000,
    hookTimeout: 180_000,
    fileParallelism: false,
    reporters: ['verbose'],
  },
});
