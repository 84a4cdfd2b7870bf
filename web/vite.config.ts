import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { defineConfig, type Plugin } from "vite";

// The API docs' pages (/docs: Swagger UI, /redoc: ReDoc) load these files from this build
// (served at /docs/assets/), never from a CDN.
const DOCS_ASSETS: [string, string][] = [
  ["node_modules/swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-bundle.js"],
  ["node_modules/swagger-ui-dist/swagger-ui.css", "swagger-ui.css"],
  ["node_modules/redoc/bundles/redoc.standalone.js", "redoc.standalone.js"],
];

const REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg";
const REDOC_LOGO =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16" width="16" height="16">' +
  '<rect width="16" height="16" rx="3" fill="#1f6feb"/></svg>\n';

function docsAssets(): Plugin {
  return {
    name: "crm-docs-assets",
    apply: "build",
    writeBundle(options) {
      const dir = `${options.dir ?? "dist"}/docs`;
      mkdirSync(dir, { recursive: true });
      for (const [from, to] of DOCS_ASSETS) copyFileSync(from, `${dir}/${to}`);
      // ReDoc's sidebar shows a logo from its CDN: a local one instead (the page loads
      // nothing from elsewhere, and the Content-Security-Policy would refuse it).
      const redoc = `${dir}/redoc.standalone.js`;
      const source = readFileSync(redoc, "utf8");
      if (!source.includes(REDOC_CDN_LOGO)) throw new Error(`${redoc}: no ${REDOC_CDN_LOGO} to replace`);
      writeFileSync(redoc, source.replaceAll(REDOC_CDN_LOGO, "/docs/assets/redoc-logo.svg"));
      writeFileSync(`${dir}/redoc-logo.svg`, REDOC_LOGO);
    },
  };
}

// `npm run dev` serves the UI with hot reload and passes /api to a running `crm serve`.
export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  // No inline script or style in the built page: the server's Content-Security-Policy
  // allows scripts and styles from the app's own files only.
  build: { outDir: "dist", emptyOutDir: true, sourcemap: true, target: "es2022", modulePreload: { polyfill: false },
           assetsInlineLimit: 0 },
  plugins: [docsAssets()],
  server: { proxy: { "/api": "http://127.0.0.1:8000" } },
});
