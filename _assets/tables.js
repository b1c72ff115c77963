// Tables wider than the text column and taller than the window (the errata, the intro's
// summary) are shown one row per block, each cell under its column's name, instead of
// scrolling their last columns out of sight (a short wide table scrolls, its bar in view). Run once the math is typeset (formulas set the tables' widths), and again
// when the window is resized. Styles: custom.css (.sokit-stacked).
(function () {
  function stack() {
    document.querySelectorAll(".bd-article table").forEach(function (table) {
      var heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.textContent.trim();
      });
      if (!heads.length) return;
      table.classList.remove("sokit-stacked");
      var room = (table.parentElement || table).clientWidth;
      // a table that fits, or a short one whose scroll bar is in sight, stays a table
      if (table.scrollWidth <= room + 2 || table.getBoundingClientRect().height <= 0.8 * window.innerHeight) return;
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        Array.prototype.forEach.call(tr.children, function (td, i) {
          if (heads[i]) td.setAttribute("data-label", heads[i]);
        });
      });
      table.classList.add("sokit-stacked");
    });
  }
  function whenTypeset() {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset || Promise.resolve()).then(stack);
  }
  window.addEventListener("load", whenTypeset);
  window.addEventListener("resize", stack);
})();
