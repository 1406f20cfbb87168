// `npm run test:integration` runs this first: the integration tests need a real qkv server, and fail
// (they do not skip) without one.
if (!process.env.QKV_WEB_URL) {
  console.error(
    "QKV_WEB_URL is not set: the integration tests need a real qkv server's web listener, such as\n" +
      "  QKV_WEB_URL=https://localhost:9528 NODE_EXTRA_CA_CERTS=certs/ca.pem npm run test:integration\n" +
      "(qkv serve --web 127.0.0.1:9528 serves it; cargo test --test js_client starts one and runs them).",
  );
  process.exit(1);
}
