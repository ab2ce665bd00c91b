/* The lineage picture's click-to-summary (lineage/draw.py's figure): `lineage --format html` and report.html.
 *
 * Each figure carries its nodes' summaries as JSON beside the SVG; a click on a node (or Enter or
 * Space on it, for the keyboard) lists that node's summary in the figure's panel. Text only goes in
 * through textContent: names come from the store and are never parsed as HTML.
 */
(function () {
  "use strict";

  function show(figure, summaries, node) {
    var summary = summaries[Number(node.getAttribute("data-node"))];
    var panel = figure.querySelector(".graph-summary");
    if (!summary || !panel) {
      return;
    }
    figure.querySelectorAll(".node.selected").forEach(function (other) {
      other.classList.remove("selected");
    });
    node.classList.add("selected");
    panel.textContent = "";
    var heading = document.createElement("h3");
    heading.className = "graph-summary-title";
    heading.textContent = summary.label + (summary.kind === "run" ? " (run)" : "");
    var list = document.createElement("dl");
    summary.lines.forEach(function (line) {
      var term = document.createElement("dt");
      term.textContent = line[0];
      var value = document.createElement("dd");
      value.textContent = line[1];
      value.setAttribute("data-field", line[0]);
      list.appendChild(term);
      list.appendChild(value);
    });
    panel.appendChild(heading);
    panel.appendChild(list);
    panel.setAttribute("data-shown", node.getAttribute("data-key"));
  }

  document.querySelectorAll("figure.lineage-graph").forEach(function (figure) {
    var holder = figure.querySelector("script.graph-summaries");
    var summaries = holder ? JSON.parse(holder.textContent) : [];
    figure.addEventListener("click", function (event) {
      var node = event.target.closest(".node");
      if (node && figure.contains(node)) {
        show(figure, summaries, node);
      }
    });
    figure.addEventListener("keydown", function (event) {
      var node = event.target.closest && event.target.closest(".node");
      if (node && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        show(figure, summaries, node);
      }
    });
  });
})();
