import { defineConfig } from 'tsup';

export default defineConfig({
  entry: { index: 'src/index.ts', 'testing/index': 'src/testing/index.ts', cli: 'src/cli/main.ts' },
  format: ['esm', 'cjs'],
  dts: { entry: { index: 'src/index.ts', 'testing/index': 'src/testing/index.ts' } },
  target: 'node20',
  platform: 'node',
  // import.meta.url in the CommonJS build, __dirname in the ESM one.
  shims: true,
  clean: true,
  splitting: true,
  // Rollup splits the CommonJS build: tsup's own CJS splitting runs sucrase
  // over every chunk, which rewrites each ?. and ?? into a helper call with
  // closures (slow in the walk's hot loops, and garbage on every pass).
  treeshake: true,
  sourcemap: true,
  // chai is the user's own copy, for the assertion plugin.
  external: ['chai'],
});
