/* The operating-threshold panel of report.html (report/html.py: _thresholds_section).
 *
 * #threshold-data holds, per choice (0: one minimum for every class, then each class in the
 * model's order), the right and wrong guesses kept at each minimum score k/steps, exact counts
 * from the operating curves (report/metrics.py: threshold_grid), and the class's labelled images.
 * Moving the slider only reads those counts: precision = right / kept, recall = right / images,
 * unknown = guesses at minimum 0 (all of them) less those kept. No row of the table is touched,
 * so a move costs the same at 1,000,000 rows as at 100.
 */
(function () {
  "use strict";

  var source = document.getElementById("threshold-data");
  if (!source) return;  // a report without operating curves has no panel
  var data = JSON.parse(source.textContent);
  var choice = document.getElementById("threshold-class");
  var slider = document.getElementById("threshold-slider");
  var shown = document.getElementById("threshold-value");
  var readout = document.getElementById("threshold-readout");

  function field(name) {
    return readout.querySelector('[data-field="' + name + '"]');
  }

  function put(name, text, value) {
    var cell = field(name);
    cell.textContent = text;
    cell.setAttribute("data-value", value === null ? "" : String(value));
  }

  function update() {
    var curve = data.curves[Number(choice.value)];
    var step = Number(slider.value);
    var right = curve.right[step], kept = right + curve.wrong[step];
    var guessed = curve.right[0] + curve.wrong[0];
    var precision = kept > 0 ? right / kept : null;
    var recall = curve.support > 0 ? right / curve.support : null;
    shown.textContent = (step / data.steps).toFixed(3);
    put("precision", precision === null ? "n/a (nothing kept)" : precision.toFixed(4), precision);
    put("recall", recall === null ? "n/a (no images)" : recall.toFixed(4), recall);
    put("unknown", (guessed - kept).toLocaleString("en-US"), guessed - kept);
    put("kept", right.toLocaleString("en-US") + " of " + kept.toLocaleString("en-US"), kept);
  }

  choice.addEventListener("change", update);
  slider.addEventListener("input", update);
  update();
})();
