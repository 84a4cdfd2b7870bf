import { defineConfig } from "vite";

// `npm run dev` serves the UI with hot reload and passes /api to a running `crm serve`.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true, target: "es2022" },
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
});
