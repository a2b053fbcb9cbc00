// The initializer of imagesvc's interactive API docs (/api/docs/): Swagger UI, vendored in
// static/swagger-ui/, rendering the gateway's OpenAPI description. A file of its own rather
// than an inline script, so that the page runs under `script-src 'self'`.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    // The plain layout: the standalone one adds a top bar that loads any URL typed into it.
    layout: "BaseLayout",
    deepLinking: true,
    // No badge that sends the description to the public validator: nothing leaves this origin.
    validatorUrl: null,
    // An API key typed into Authorize lives in this page only, never in the browser's storage.
    persistAuthorization: false,
    displayRequestDuration: true,
  });
});
