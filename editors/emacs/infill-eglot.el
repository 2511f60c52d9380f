;;; infill-eglot.el --- infill-ls with Eglot (Emacs 29+, or Eglot from GNU ELPA)  -*- lexical-binding: t; -*-
;; Eglot shows the suggestion through completion-at-point (textDocument/completion, one item); the
;; code actions are under M-x eglot-code-actions. Put this in your init file, then M-x eglot in a buffer.

(with-eval-after-load 'eglot
  (add-to-list 'eglot-server-programs
               `((python-mode python-ts-mode js-mode js-ts-mode lua-mode rust-mode rust-ts-mode)
                 . ("infill-ls" "serve"   ; or "/path/to/infill-ls/.venv/bin/infill-ls"
                    :initializationOptions (:model "default" :load "startup"
                                            :completion (:time_budget_ms 1000))))))

;; Optional: start Eglot with infill-ls automatically in Python buffers.
;; (add-hook 'python-mode-hook #'eglot-ensure)

(provide 'infill-eglot)
;;; infill-eglot.el ends here
